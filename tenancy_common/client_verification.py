"""Client-certificate verification whose verdict is read after the handshake.

kube-apiserver answers an untrusted client certificate with `401 Unauthorized`; Python's
`ssl` would instead abort the TLS handshake, leaving the caller a bare alert. To answer
like Kubernetes, the listener lets OpenSSL verify the chain as usual (trust store,
client-auth purpose, validity, intermediates sent by the client) but not abort on
failure, and the request path reads OpenSSL's verdict with `SSL_get_verify_result`, and
the intermediates the client sent with `SSL_get_peer_cert_chain`.

Python exposes neither hook (nor SSL_MODE_RELEASE_BUFFERS, set here too), so they go through ctypes to the libssl that `_ssl` is
linked against. Every pointer is checked against a value it must have before use; if
any check fails the listener keeps OpenSSL's default (abort the handshake), and a
connection whose verdict cannot be read is refused: the fallback is never "trusted".
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl

logger = logging.getLogger(__name__)

X509_V_OK = 0
_SSL_VERIFY_PEER = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
_SSL_CTRL_MODE = 33
_SSL_MODE_RELEASE_BUFFERS = 0x10
_HEAD = object.__basicsize__  # PyObject_HEAD: the C pointer fields follow it
_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _keep_going(_preverify_ok: int, _store_ctx: int | None) -> int:
    return 1  # the error stays recorded in the SSL object's verify result


_KEEP_GOING = _VerifyCallback(_keep_going)  # referenced for the life of the process


def _load_libssl() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(_ssl.__file__)  # resolves through _ssl's own libssl
        lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
        lib.SSL_CTX_set_verify.restype = None
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
        lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
        lib.SSL_get_verify_result.argtypes = [ctypes.c_void_p]
        lib.SSL_get_verify_result.restype = ctypes.c_long
        lib.X509_verify_cert_error_string.argtypes = [ctypes.c_long]
        lib.X509_verify_cert_error_string.restype = ctypes.c_char_p
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_get_peer_cert_chain.argtypes = [ctypes.c_void_p]
        lib.SSL_get_peer_cert_chain.restype = ctypes.c_void_p
        lib.OPENSSL_sk_num.argtypes = [ctypes.c_void_p]
        lib.OPENSSL_sk_num.restype = ctypes.c_int
        lib.OPENSSL_sk_value.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.OPENSSL_sk_value.restype = ctypes.c_void_p
        lib.i2d_X509.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.i2d_X509.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - a Python without a linked libssl
        return None
    return lib


_libssl = _load_libssl()


def _context_pointer(context: ssl.SSLContext) -> int | None:
    """The SSL_CTX* of a context, verified by reading back a setting we just changed."""
    if _libssl is None:
        return None
    pointer = ctypes.c_void_p.from_address(id(context) + _HEAD).value
    if not pointer:
        return None
    original = context.verify_mode
    try:
        context.verify_mode = ssl.CERT_REQUIRED
        required = _libssl.SSL_CTX_get_verify_mode(pointer)
        context.verify_mode = ssl.CERT_OPTIONAL
        optional = _libssl.SSL_CTX_get_verify_mode(pointer)
    finally:
        context.verify_mode = original
    expected = (_SSL_VERIFY_PEER | _SSL_VERIFY_FAIL_IF_NO_PEER_CERT, _SSL_VERIFY_PEER)
    return pointer if (required, optional) == expected else None


def defer_client_verification(context: ssl.SSLContext) -> bool:
    """Make `context` (a server context with CERT_OPTIONAL) complete handshakes with any
    client certificate; True when done, False when the platform does not allow it."""
    pointer = _context_pointer(context)
    if pointer is None or _libssl is None:
        logger.warning(
            "cannot defer client-certificate verification; bad certificates fail the handshake"
        )
        return False
    _libssl.SSL_CTX_set_verify(pointer, _SSL_VERIFY_PEER, _KEEP_GOING)
    return True


def release_idle_buffers(context: ssl.SSLContext) -> bool:
    """SSL_MODE_RELEASE_BUFFERS: OpenSSL frees a connection's record buffers (about 34 KB)
    whenever they are empty. The router keeps a kept-alive connection per tenant mostly
    idle, so this is most of its memory per tenant. True when set."""
    pointer = _context_pointer(context)
    if pointer is None or _libssl is None:
        return False
    mode = _libssl.SSL_CTX_ctrl(pointer, _SSL_CTRL_MODE, _SSL_MODE_RELEASE_BUFFERS, None)
    return bool(mode & _SSL_MODE_RELEASE_BUFFERS)


def _ssl_pointer(tls: ssl.SSLObject) -> int | None:
    """The SSL* of a connection, checked to belong to its current context (the SNI
    callback may swap it)."""
    native = getattr(tls, "_sslobj", None)
    if _libssl is None or native is None:
        return None
    pointer = ctypes.c_void_p.from_address(
        id(native) + _HEAD + ctypes.sizeof(ctypes.c_void_p)
    ).value
    if not pointer or _libssl.SSL_get_SSL_CTX(pointer) != _context_pointer_unchecked(tls.context):
        return None
    return pointer


def verify_result(tls: ssl.SSLObject) -> tuple[int, str]:
    """OpenSSL's verdict on the peer's certificate chain: (code, reason); 0 is trusted.

    Returns a failure when the verdict cannot be read, so callers fail closed.
    """
    pointer = _ssl_pointer(tls)
    if pointer is None or _libssl is None:
        return -1, "verification result unavailable"
    code = int(_libssl.SSL_get_verify_result(pointer))
    reason = _libssl.X509_verify_cert_error_string(code) or b"unknown"
    return code, reason.decode("ascii", "replace")


def _context_pointer_unchecked(context: ssl.SSLContext) -> int | None:
    return ctypes.c_void_p.from_address(id(context) + _HEAD).value


def peer_intermediates(tls: ssl.SSLObject) -> list[bytes]:
    """DER of the certificates the client sent after its own (its intermediates), in the
    order sent; empty when it sent none or they cannot be read (callers then find no
    path through them, and refuse)."""
    pointer = _ssl_pointer(tls)
    if pointer is None or _libssl is None:
        return []
    stack = _libssl.SSL_get_peer_cert_chain(pointer)  # server side: without the leaf
    if not stack:
        return []
    chain = []
    for index in range(_libssl.OPENSSL_sk_num(stack)):
        x509 = _libssl.OPENSSL_sk_value(stack, index)
        size = _libssl.i2d_X509(x509, None)
        if not x509 or size <= 0:
            return []
        buffer = ctypes.create_string_buffer(size)
        cursor = ctypes.c_void_p(ctypes.addressof(buffer))  # i2d_X509 advances it
        if _libssl.i2d_X509(x509, ctypes.byref(cursor)) != size:
            return []
        chain.append(buffer.raw)
    return chain
