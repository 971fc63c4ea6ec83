"""OPC UA security for the line's server (asyncua): certificates, users and roles.

With ``line.opcua.security`` the server offers only Basic256Sha256 endpoints (Sign and/or
SignAndEncrypt) with its own certificate; a client needs a certificate (from the
``trusted_clients`` folder, when given) and logs in with a user name token checked against
the station's users file (`lineside users`; a machine's token works as its password). Roles
are the page's: StartSingleJob, AcknowledgeResult and ResetError need operator,
ActivateRecipe needs engineer; a method not listed needs admin. A client without a user name
is refused (``anonymous: off``) or may browse, read and subscribe but never call or write
(``anonymous: read-only``).

Without ``security`` the server keeps asyncua's open defaults (no security, anyone may call),
which is why the endpoint defaults to loopback and `health` warns when it is not.

The caller of a method (``caller()``) is the user name the permission check saw for the same
request: asyncua runs the check and the method in one task, so a ContextVar carries it.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.permission_rules import (
    USER_TYPES,
    PermissionRuleset,
    User,
    UserRole,
)
from asyncua.ua.ua_binary import struct_from_binary

from ..errors import LinesideError
from ..users import UsersFile, role_at_least

METHOD_ROLES = {"StartSingleJob": "operator", "AcknowledgeResult": "operator", "ResetError": "operator",
                "ActivateRecipe": "engineer"}
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("opcua_caller", default="opcua")
_CALL = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)
_WRITE = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)
_SESSION_TYPES = set(map(ua.NodeId, USER_TYPES))
MODES = {"Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
         "SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt}


def caller() -> str:
    """Who called the method being run: USER@opcua, or "opcua" on a server without security."""
    return _CALLER.get()


@dataclass
class LinesideUser(User):
    lineside_role: str | None = None


class StationUsers:
    """asyncua's user manager over the station's users file."""

    def __init__(self, users: UsersFile | None, anonymous: str):
        self.users, self.anonymous = users, anonymous

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            return LinesideUser(role=UserRole.Anonymous) if self.anonymous == "read-only" else None
        if self.users is None or password is None:
            return None
        principal = self.users.authenticate(username, password)
        if principal is None:
            token = self.users.by_token(password)
            principal = token if token is not None and token.name == username else None
        if principal is None:
            return None
        return LinesideUser(role=UserRole.User, name=principal.name, lineside_role=principal.role)


class RoleRuleset(PermissionRuleset):
    """Session services for everyone admitted; writes for nobody (the variables are read-only);
    calls by role, per method. A refused call is journaled (``opcua_refused``)."""

    def __init__(self, journal_event=None):
        self.journal_event = journal_event or (lambda kind, who, **detail: None)

    def check_validity(self, user, action_type_id, body):
        if action_type_id not in _SESSION_TYPES or action_type_id == _WRITE:
            return False
        if action_type_id != _CALL:
            return True
        role = getattr(user, "lineside_role", None)
        who = f"{getattr(user, 'name', None) or 'anonymous'}@opcua"
        try:
            params = struct_from_binary(ua.CallParameters, body.copy())
        except Exception:  # noqa: BLE001 (a malformed request is refused; the processor reports it)
            return False
        names = [str(m.MethodId.Identifier).rsplit(".", 1)[-1] for m in params.MethodsToCall]
        refused = [n for n in names if not role_at_least(role, METHOD_ROLES.get(n, "admin"))]
        if refused:  # anonymous (no role) may call nothing
            self.journal_event("opcua_refused", who, methods=refused, role=role or "anonymous")
            return False
        _CALLER.set(who)
        return True


def make_server(security, users_cfg) -> Server:
    """An asyncua Server, with the station's users when security is configured."""
    if security is None:
        return Server()
    return GatedServer(user_manager=_user_manager(security, users_cfg))


def _user_manager(security, users_cfg):
    if users_cfg is None and security.anonymous == "off":
        raise LinesideError("line.opcua.security needs users: add `security: {users: PATH}` to the station config "
                            "and `lineside users add`, or set line.opcua.security.anonymous: read-only")
    users = UsersFile(users_cfg.users) if users_cfg is not None else None
    if users is not None:
        users.users()  # a users file readable by others stops the start, not the first login
    return StationUsers(users, security.anonymous)


class GatedServer(Server):
    """asyncua checks a trusted-client list only against the certificate a client names when it
    creates a session, which a client may leave out; the certificate that secures the channel is
    the one that counts. So the channel's security policies are wrapped to check it when the
    channel opens (``_setup_server_nodes`` is where asyncua makes them, at start)."""

    trusted: TrustedClients | None = None

    async def _setup_server_nodes(self) -> None:
        await super()._setup_server_nodes()
        if self.trusted is not None:
            self._policies[:] = [ChannelGate(p, self.trusted) for p in self._policies]


class ChannelGate:
    """A security policy factory that opens a channel only for a trusted client certificate."""

    def __init__(self, factory, trusted: TrustedClients):
        self.factory, self.trusted = factory, trusted

    def matches(self, uri, mode=None):
        return self.factory.matches(uri, mode)

    def create(self, peer_certificate):
        from asyncua.crypto.uacrypto import x509_from_der

        cert = x509_from_der(peer_certificate) if peer_certificate else None
        status = self.trusted.refusal(cert)
        if status is not None:
            raise ua.UaStatusCodeError(status)
        return self.factory.create(peer_certificate)


async def apply(server, security, journal_event=None) -> None:
    """Certificates, endpoints, identity tokens, client trust: before server.start()."""
    if security is None:
        return
    for path in (security.certificate, security.private_key):
        if not Path(path).is_file():
            raise LinesideError(f"OPC UA security: {path} does not exist: make a certificate with "
                                "`lineside keys tls --out DIR --uri urn:lineside:STATION` (docs/security.md)")
    cert = _read_certificate(Path(security.certificate))
    from cryptography.hazmat.primitives.serialization import Encoding

    await server.load_certificate(cert.public_bytes(Encoding.DER))  # DER bytes: whatever the file's suffix
    await server.load_private_key(Path(security.private_key).read_bytes(), format="pem")
    uri = _certificate_uri(cert)
    if uri:
        await server.set_application_uri(uri)  # clients check the server's URI against its certificate
    server.set_security_policy([MODES[m] for m in security.modes], permission_ruleset=RoleRuleset(journal_event))
    tokens = [ua.UserNameIdentityToken] + ([ua.AnonymousIdentityToken] if security.anonymous == "read-only" else [])
    server.set_identity_tokens(tokens)
    if security.trusted_clients is not None:
        trusted = TrustedClients(Path(security.trusted_clients))
        server.set_certificate_validator(trusted)  # the certificate named in CreateSession
        server.trusted = trusted  # and the channel's own (GatedServer)


class TrustedClients:
    """Admit a client certificate only if it is one of the folder's (exact match) and in its validity.

    asyncua's TrustStore reads only *.der/*.pem names, so a client.crt copied in would be silently
    ignored; this reads every file of the folder as PEM or DER and refuses to start on one it cannot.
    """

    def __init__(self, folder: Path):
        if not folder.is_dir():
            raise LinesideError(f"OPC UA security: trusted_clients {folder} is not a folder: copy each client's "
                                "certificate there")
        self.fingerprints = set()
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            self.fingerprints.add(_fingerprint(_read_certificate(path)))
        if not self.fingerprints:
            raise LinesideError(f"OPC UA security: trusted_clients {folder} holds no certificate: copy each "
                                "client's certificate there")

    def refusal(self, cert):
        """None when the certificate is trusted and valid now; else the status code that refuses it."""
        import datetime

        if cert is None or _fingerprint(cert) not in self.fingerprints:
            return ua.StatusCodes.BadCertificateUntrusted
        now = datetime.datetime.now(datetime.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return ua.StatusCodes.BadCertificateTimeInvalid
        return None

    async def __call__(self, cert, app_description) -> None:
        from asyncua.server.internal_session import ServiceError

        status = self.refusal(cert)
        if status is not None:
            raise ServiceError(status)


def _fingerprint(cert) -> bytes:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256())


def _read_certificate(path: Path):
    from cryptography import x509

    try:
        data = path.read_bytes()
        return (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except (OSError, ValueError) as exc:
        raise LinesideError(f"OPC UA security: {path} is not a readable X.509 certificate ({exc}): make one with "
                            "`lineside keys tls --uri URI`") from None


def _certificate_uri(cert) -> str | None:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
