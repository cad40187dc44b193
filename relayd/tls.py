"""
TLS for listeners: certificate chains, TLS 1.2 minimum, and certificates re-read on SIGHUP.

The connection creator holds the current CertificateOptions and swaps it on reload, so renewed
certificates reach new connections while established ones keep theirs. ALPN is offered by the Site
(see relayd.web.site), which only ever speaks http/1.1: WebSocket over h2 is not served, and a browser
offering `h2,http/1.1` settles on http/1.1.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from relayd.config.endpoint import TLSFiles

_log = Logger()


class TLSLoadError(Exception):
    """A key, certificate or chain file that cannot be read or does not fit together."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSLoadError(f"cannot read the {what} file {path}: {e.strerror}") from None


def load_certificate_options(files: TLSFiles) -> ssl.CertificateOptions:
    cert_data = _read(files.cert, "certificate")
    key_data = _read(files.key, "private key")
    try:
        certs = x509.load_pem_x509_certificates(cert_data)
        key = load_pem_private_key(key_data, password=None)
        chain = certs[1:]
        if files.chain:
            chain += x509.load_pem_x509_certificates(_read(files.chain, "certificate chain"))
    except (ValueError, TypeError) as e:
        raise TLSLoadError(f"cannot parse the TLS files {files.cert} / {files.key}: {e}") from None
    try:
        options = ssl.CertificateOptions(
            privateKey=key,
            certificate=certs[0],
            extraCertChain=chain,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        options.getContext()  # checks that the key matches the certificate, now rather than per connection
    except Exception as e:
        raise TLSLoadError(f"the key {files.key} does not fit the certificate {files.cert}: {e}") from None
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """Server connection creator whose certificate files can be re-read while listening."""

    def __init__(self, files: TLSFiles):
        self.files = files
        self._options = load_certificate_options(files)

    def reload(self) -> bool:
        """Re-read the files; on failure keep serving the previous certificate and say why."""
        try:
            self._options = load_certificate_options(self.files)
        except TLSLoadError as e:
            _log.error("TLS reload failed, keeping the previous certificate: {error}", error=str(e))
            return False
        _log.info("TLS certificate reloaded from {cert}", cert=self.files.cert)
        return True

    def serverConnectionForTLS(self, tlsProtocol):
        return self._options.serverConnectionForTLS(tlsProtocol)
