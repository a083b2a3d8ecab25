"""mmcls.utils shim: get_root_logger (a plain ``logging`` logger named 'mmcls')."""

import logging


def get_root_logger(log_file=None, log_level=logging.INFO):
    logger = logging.getLogger("mmcls")
    logger.setLevel(log_level)
    return logger
