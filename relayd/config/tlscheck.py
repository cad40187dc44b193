"""Early checks of TLS files, so a bad certificate fails at start-up with its file named."""

from __future__ import annotations

from relayd.config.schema import BadValue


def check_tls_files(tls) -> None:
    from relayd.tls import TLSLoadError, load_certificate_options

    try:
        load_certificate_options(tls)
    except TLSLoadError as e:
        raise BadValue(str(e)) from None
