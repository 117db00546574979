"""A tiny PKI for a pilot: one CA, a broker server certificate, optional client certificates.

Why: meters must verify the broker (no TLS without a trust anchor), and a pilot has no corporate CA.
MicroPython's mbedTLS only accepts the CA as DER `cadata`, so the CA is written as PEM (mosquitto,
paho) and DER (boards). Keys are EC P-256 by default (small handshakes on 520 KB boards; mbedTLS on
ESP32/RP2 verifies them); RSA-2048 on request. Private keys are written 0600 and never overwritten;
an existing CA is reused so re-running never invalidates the CA already flashed on meters.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .fileio import ToolError, write_public, write_secret

KEY_TYPES = ("ec", "rsa")
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime mainstream TLS clients accept

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class PkiPaths:
    """Where the files of one PKI directory live (ca.crt/ca.der/ca.key, server.crt/server.key).

    `key_dir` keeps the CA private key apart: a broker's folder is handed to the broker's user as a
    whole, and the key that can mint a server certificate meters trust must not go with it.
    """

    dir: Path
    key_dir: Path | None = None

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_der(self) -> Path:
        return self.dir / "ca.der"

    @property
    def ca_key(self) -> Path:
        return (self.key_dir or self.dir) / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def client_cert(self, name: str) -> Path:
        return self.dir / f"client-{name}.crt"

    def client_key(self, name: str) -> Path:
        return self.dir / f"client-{name}.key"

    def tls(self) -> dict[str, Path]:
        """The {'ca','cert','key'} mapping tests/brokerutil.Mosquitto(tls=...) expects."""
        return {"ca": self.ca_cert, "cert": self.server_cert, "key": self.server_key}


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ToolError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meterveil pilot"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    # Backdate a little: a board whose RTC lags must not see a "not yet valid" certificate.
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)


def _load_ca(paths: PkiPaths) -> tuple[x509.Certificate, PrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ToolError(f"cannot load the CA in {paths.dir} ({e}); fix or remove ca.crt/ca.key "
                        f"(removing it means every meter needs the new ca.der)") from e
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ToolError(f"{paths.ca_key}: unsupported key type {type(key).__name__}")
    return cert, key


def ensure_ca(paths: PkiPaths, *, common_name: str = "meterveil pilot CA", key_type: str = "ec",
              days: int = CA_DAYS) -> tuple[x509.Certificate, PrivateKey]:
    """Load the CA from `paths.dir`, or create it (PEM + DER cert, 0600 key) if neither file exists."""
    have_cert, have_key = paths.ca_cert.exists(), paths.ca_key.exists()
    if have_cert and have_key:
        cert, key = _load_ca(paths)
        if not paths.ca_der.exists():
            write_public(paths.ca_der, cert.public_bytes(serialization.Encoding.DER))
        return cert, key
    if have_cert or have_key:
        raise ToolError(f"{paths.dir} has only one of ca.crt / ca.key; restore the other or remove both")
    key = _new_key(key_type)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now()).not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    if paths.key_dir is not None:  # owner-only folder: nobody else even lists it
        paths.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths.key_dir.chmod(0o700)
    write_secret(paths.ca_key, _key_pem(key))
    write_public(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    write_public(paths.ca_der, cert.public_bytes(serialization.Encoding.DER))
    return cert, key


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):  # ordered de-duplication
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _issue_leaf(ca: tuple[x509.Certificate, PrivateKey], common_name: str, usage: x509.ObjectIdentifier,
                names: Sequence[str], key_type: str, days: int) -> tuple[x509.Certificate, PrivateKey]:
    ca_cert, ca_key = ca
    key = _new_key(key_type)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(_now()).not_valid_after(_now() + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=key_type == "rsa", data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _server_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)}


def ensure_server_cert(paths: PkiPaths, names: Sequence[str] = (), *, key_type: str = "ec",
                       days: int = LEAF_DAYS) -> list[str]:
    """Issue the broker certificate for localhost/127.0.0.1 + `names`; re-issue only if the names changed.

    Returns the SAN list. Re-issuing is safe: clients pin the CA, not the server certificate.
    """
    all_names = list(dict.fromkeys([*DEFAULT_SERVER_NAMES, *names]))
    for n in all_names:
        if not n or any(c.isspace() for c in n) or "/" in n:
            raise ToolError(f"invalid server name {n!r}: give a hostname or an IP address")
    if paths.server_cert.exists() and paths.server_key.exists():
        current = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
        if _server_names(current) == {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in all_names}:
            return all_names
    ca = ensure_ca(paths, key_type=key_type)
    cert, key = _issue_leaf(ca, all_names[-1] if names else "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                            all_names, key_type, days)
    write_secret(paths.server_key, _key_pem(key), overwrite=True)
    write_public(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    return all_names


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def issue_client_cert(paths: PkiPaths, name: str, *, key_type: str = "ec", days: int = LEAF_DAYS,
                      overwrite: bool = False) -> tuple[Path, Path]:
    """Issue a client certificate with CN=`name` (for brokers that use require_certificate)."""
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ToolError(f"invalid client name {name!r}: use letters, digits, '_' or '-'")
    if paths.client_key(name).exists() and not overwrite:
        raise ToolError(f"{paths.client_key(name)} already exists; refusing to replace a client key")
    ca = ensure_ca(paths, key_type=key_type)
    cert, key = _issue_leaf(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, [], key_type, days)
    write_secret(paths.client_key(name), _key_pem(key), overwrite=overwrite)
    write_public(paths.client_cert(name), cert.public_bytes(serialization.Encoding.PEM))
    return paths.client_cert(name), paths.client_key(name)


def create_pki(directory: Path, server_names: Sequence[str] = (), clients: Sequence[str] = (),
               *, key_type: str = "ec") -> PkiPaths:
    """CA (reused if present) + server certificate (+ client certificates) in `directory`."""
    if key_type not in KEY_TYPES:
        raise ToolError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")
    paths = PkiPaths(Path(directory))
    ensure_ca(paths, key_type=key_type)
    ensure_server_cert(paths, server_names, key_type=key_type)
    for c in clients:
        if not paths.client_key(c).exists():
            issue_client_cert(paths, c, key_type=key_type)
    return paths
