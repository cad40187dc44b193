"""A test certificate authority, made fresh in each test that needs one."""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class TestCA:
    __test__ = False

    """A root, an intermediate, and leaf certificates signed by the intermediate."""

    def __init__(self, directory: str):
        self.directory = directory
        now = datetime.datetime.now(datetime.timezone.utc)
        self._start, self._end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._sign(_name("relayd test root"), self.root_key.public_key(), _name("relayd test root"),
                               self.root_key, ca=True)
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = self._sign(_name("relayd test intermediate"), self.inter_key.public_key(),
                                _name("relayd test root"), self.root_key, ca=True)
        self.root_path = self._write("root.crt", self.root.public_bytes(serialization.Encoding.PEM))
        self.chain_path = self._write("chain.crt", self.inter.public_bytes(serialization.Encoding.PEM))

    def _sign(self, subject, public_key, issuer, issuer_key, ca=False, names=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._start)
            .not_valid_after(self._end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if names:
            alt = []
            for n in names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    alt.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def issue(self, name: str = "localhost", prefix: str = "server") -> tuple[str, str]:
        """Write a key and a leaf certificate for name; returns (key path, cert path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(_name(name), key.public_key(), _name("relayd test intermediate"), self.inter_key,
                          names=(name, "127.0.0.1"))
        return (
            self._write(f"{prefix}.key", _pem_key(key)),
            self._write(f"{prefix}.crt", cert.public_bytes(serialization.Encoding.PEM)),
        )

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)
