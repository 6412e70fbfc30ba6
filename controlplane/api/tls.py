"""TLS and mutual TLS for the gRPC API and the agent stream.

Files are read and checked at startup, so a missing file, an unreadable
one or a key that does not belong to its certificate stops ``xinhe server``
(or an agent, or a client) with one clear line instead of failing every
handshake later. The check uses the standard library's ``ssl`` module, so TLS
needs no extra runtime dependency.

The server follows certificate rotation without a restart (cert-manager
rewrites the files in place): before each new connection's handshake it
looks at the files' modification stamps and, when they changed, serves the
new certificate, key and CA from then on. A rotation caught half-way (a new
certificate beside the old key) keeps the previous files in service until
the set is consistent again. Connections already open keep theirs.

Agents follow rotation of their own files the same way
(:class:`ReloadingChannelCredentials`): whenever an agent (re)connects it
checks the stamps and, when they changed to a consistent set, opens its
channels with the new certificate, key and CA. A stream that stays up keeps
its connection (TLS checks certificates at the handshake only).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TLSError(ValueError):
    """A TLS file is missing, unreadable, malformed or mismatched."""


def _read(path: str | Path, what: str) -> bytes:
    """The bytes of ``path``; TLSError naming ``what`` when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise TLSError(f"cannot read {what} {path}: {err.strerror or err}") from err
    if b"-----BEGIN" not in data:
        raise TLSError(f"{what} {path} is not a PEM file")
    return data


def _check_pair(cert_file: str | Path, key_file: str | Path) -> None:
    """Raise TLSError unless ``key_file`` is the private key of ``cert_file``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as err:
        reason = "the key does not match the certificate" \
            if "MISMATCH" in str(err).upper() else f"invalid certificate or key ({err})"
        raise TLSError(f"TLS certificate {cert_file} / key {key_file}: {reason}") from err


def _check_ca(ca_file: str | Path) -> bytes:
    """The PEM bytes of a CA bundle, checked to hold at least one certificate."""
    data = _read(ca_file, "TLS CA file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode())
    except (ssl.SSLError, UnicodeDecodeError) as err:
        raise TLSError(f"TLS CA file {ca_file} holds no valid certificate ({err})") from err
    return data


def _key_pair(cert_file: str | Path | None, key_file: str | Path | None,
              ) -> tuple[bytes, bytes] | None:
    """(key, cert) PEM bytes, both checked; None when neither is given."""
    if not cert_file and not key_file:
        return None
    if not cert_file or not key_file:
        raise TLSError("a TLS certificate and its key must be given together "
                       "(--tls-cert and --tls-key)")
    cert = _read(cert_file, "TLS certificate")
    key = _read(key_file, "TLS key")
    _check_pair(cert_file, key_file)
    return key, cert


def server_credentials(cert_file: str | Path | None, key_file: str | Path | None,
                       ca_file: str | Path | None = None) -> grpc.ServerCredentials | None:
    """Credentials for the listening port; None (plain text) when no cert/key.

    With ``ca_file`` as well, clients must present a certificate signed by
    that CA (mutual TLS); without it any client may connect over TLS.
    """
    pair = _key_pair(cert_file, key_file)
    if pair is None:
        if ca_file:
            raise TLSError("--tls-ca needs --tls-cert and --tls-key on the server")
        return None
    ca = _check_ca(ca_file) if ca_file else None
    files = ReloadingCertificates(cert_file, key_file, ca_file)
    initial = grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)
    return grpc.dynamic_ssl_server_credentials(initial, files.fetch,
                                               require_client_authentication=ca is not None)


Stamp = tuple[tuple[int, int, int], ...]  # (inode, size, mtime_ns) per file


def _stamp(paths: Sequence[str]) -> Stamp | None:
    """The files' identity and modification stamps; None if one is missing."""
    try:
        stats = [os.stat(p) for p in paths]
    except OSError:
        return None
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


class ReloadingCertificates:
    """The server's certificate files, re-read when they change.

    :meth:`fetch` is gRPC's certificate configuration fetcher, called before
    every new connection's handshake: None keeps the configuration in
    service, a new one replaces it. It only stats the files unless they
    changed since the configuration in service was read.
    """

    def __init__(self, cert_file: str | Path, key_file: str | Path,
                 ca_file: str | Path | None) -> None:
        self.paths = tuple(str(p) for p in (cert_file, key_file, ca_file) if p)
        self.ca_file = ca_file
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.reloads = 0

    def _stat(self) -> Stamp | None:
        return _stamp(self.paths)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            stamp = self._stat()
            if stamp is None or stamp == self._stamp:
                return None
            try:
                config = self._load()
            except TLSError as err:  # half-rotated or broken: keep serving the old set
                log.warning("TLS files changed but cannot be used yet (%s); serving the "
                            "previous certificate", err)
                return None
            if self._stat() != stamp:
                return None  # changed while being read: take it on the next connection
            self._stamp = stamp
            self.reloads += 1
        log.info("TLS certificate files changed: serving the new certificate")
        return config

    def _load(self) -> grpc.ServerCertificateConfiguration:
        pair = _key_pair(self.paths[0], self.paths[1])
        ca = _check_ca(self.ca_file) if self.ca_file else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


def channel_credentials(ca_file: str | Path | None = None,
                        cert_file: str | Path | None = None,
                        key_file: str | Path | None = None) -> grpc.ChannelCredentials | None:
    """Credentials for a client channel; None (plain text) when nothing is set.

    ``ca_file`` verifies the server (else the system roots); cert and key are
    this client's own certificate, for servers that require mutual TLS.
    """
    pair = _key_pair(cert_file, key_file)
    if not ca_file and pair is None:
        return None
    ca = _check_ca(ca_file) if ca_file else None
    key, cert = pair if pair else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


class ReloadingChannelCredentials:
    """A client's TLS files and the credentials read from them, read again
    by :meth:`refresh` when the files changed. The first read happens here:
    a bad file raises TLSError at start, as :func:`channel_credentials` does."""

    def __init__(self, ca_file: str | Path | None = None,
                 cert_file: str | Path | None = None,
                 key_file: str | Path | None = None) -> None:
        self.files = (ca_file, cert_file, key_file)
        self.paths = tuple(str(p) for p in self.files if p)
        self._stamp = _stamp(self.paths)
        self.credentials = channel_credentials(*self.files)
        self.reloads = 0

    def refresh(self) -> bool:
        """True when the files changed to a consistent new set and
        ``credentials`` now holds it; a half-rotated or missing set keeps
        the previous credentials (and is looked at again next time)."""
        stamp = _stamp(self.paths)
        if stamp is None or stamp == self._stamp:
            return False
        try:
            credentials = channel_credentials(*self.files)
        except TLSError as err:
            log.warning("TLS files changed but cannot be used yet (%s); keeping the "
                        "previous certificate", err)
            return False
        if _stamp(self.paths) != stamp:
            return False  # changed while being read: next time
        self._stamp, self.credentials = stamp, credentials
        self.reloads += 1
        log.info("TLS files changed: new connections use the new certificate")
        return True


def make_channel(address: str, credentials: grpc.ChannelCredentials | None,
                 options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A secure channel with ``credentials``, else the plain-text default."""
    if credentials is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, credentials, options=list(options))
