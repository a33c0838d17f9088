"""Errors that are the user's to fix (bad file, bad option): printed without a traceback."""

from agc.catalog import CatalogError
from agc.histograms import HistogramFileError
from agc.reader import InputFileError
from backends.base import BackendError

USER_ERRORS = (CatalogError, HistogramFileError, InputFileError, BackendError)
