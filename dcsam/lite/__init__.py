"""Building blocks of the SAM-free ``lite`` engine (see :mod:`dcsam.engines.lite`)."""
