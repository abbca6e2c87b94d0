"""The router's pure decisions: path -> route, headers kept, config and backends."""

from __future__ import annotations

import pytest

from router.backends import BackendResolver
from router.config import RouterConfig
from router.forwarding import HeaderPolicy
from router.http1 import header_list
from router.paths import LocalRoute, MetricRoute, parse_target
from router.requestheader import HeaderNames
from router.status import StatusError
from tenancy_common.durations import parse_duration
from tenancy_common.names import TenantName
from tenancy_common.tenancy_config import ConfigError, TenantSpec

BASE = "/apis/external.metrics.k8s.io/v1beta1"


@pytest.mark.parametrize(
    ("target", "route"),
    [
        (f"{BASE}/namespaces/ns-1/s0-metric", MetricRoute("ns-1", "s0-metric", "")),  # type: ignore[arg-type]
        (
            f"{BASE}/namespaces/a/m?labelSelector=x%3Dy&b=",
            MetricRoute("a", "m", "labelSelector=x%3Dy&b="),
        ),  # type: ignore[arg-type]
        (f"{BASE}/namespaces/a/Metric_Name.v1:x", MetricRoute("a", "Metric_Name.v1:x", "")),  # type: ignore[arg-type]
        (BASE, LocalRoute("resources")),
        (BASE + "/", LocalRoute("resources")),
        ("/apis", LocalRoute("apis")),
        ("/apis/external.metrics.k8s.io", LocalRoute("group")),
        ("/openapi/v2", LocalRoute("openapi")),
        ("/openapi/v3/apis/external.metrics.k8s.io/v1beta1", LocalRoute("openapi")),
    ],
)
def test_routes(target: str, route: object) -> None:
    assert parse_target(target) == route


@pytest.mark.parametrize(
    ("target", "code"),
    [
        (f"{BASE}/namespaces/a/../b/m", 400),
        (f"{BASE}/namespaces/a%2Fb/m", 400),
        (f"{BASE}/namespaces/a/m%2e%2e", 400),
        (f"{BASE}/namespaces/a/..", 400),
        (f"{BASE}/namespaces/a/.", 400),
        (f"{BASE}/namespaces/a\\b/m", 400),
        (f"{BASE}/namespaces//m", 400),
        (f"{BASE}/namespaces/-a/m", 400),
        (f"{BASE}/namespaces/{'a' * 64}/m", 400),
        (f"{BASE}/namespaces/a/m#frag", 400),
        (f'{BASE}/namespaces/a/m"x', 400),
        ("apis/external.metrics.k8s.io/v1beta1/namespaces/a/m", 400),
        (f"{BASE}/namespaces/a/m/n", 404),
        (f"{BASE}/namespaces/a", 404),
        (f"{BASE}/foo/a/m", 404),
        ("/api/v1/namespaces/a/pods", 404),
        ("/", 404),
    ],
)
def test_refused_targets(target: str, code: int) -> None:
    with pytest.raises(StatusError) as caught:
        parse_target(target)
    assert caught.value.code == code


def test_header_policy_keeps_identity_and_drops_the_rest() -> None:
    policy = HeaderPolicy(HeaderNames())
    raw = [
        (b"X-Remote-User", b"u"),
        (b"x-remote-group", b"g1"),
        (b"X-Remote-Group", b"g2"),
        (b"X-Remote-Extra-Foo%2Fbar", b"e"),
        (b"Authorization", b"Bearer t"),
        (b"Impersonate-User", b"admin"),
        (b"Impersonate-Extra-Scopes", b"x"),
        (b"Connection", b"keep-alive"),
        (b"Audit-Id", b"a"),
        (b"X-Remote-Userx", b"smuggled"),
    ]
    assert header_list(policy.forwarded(_lines(raw))) == [raw[0], raw[1], raw[2], raw[3], raw[8]]
    assert policy.username(_lines(raw)) == b"u"


def test_custom_header_names_forward_only_those() -> None:
    policy = HeaderPolicy(
        HeaderNames(username=("X-User",), group=("X-Groups",), extra_prefixes=("X-Extra-",), uid=())
    )
    raw = [
        (b"X-User", b"u"),
        (b"X-Remote-User", b"other"),
        (b"X-Extra-A", b"1"),
        (b"X-Remote-Extra-A", b"2"),
    ]
    assert header_list(policy.forwarded(_lines(raw))) == [(b"X-User", b"u"), (b"X-Extra-A", b"1")]
    assert policy.username(_lines([(b"X-User", b""), (b"X-User", b"second")])) == b"second"


def test_forwarded_lines_cross_byte_for_byte() -> None:
    policy = HeaderPolicy(HeaderNames())
    lines = b"x-REMOTE-user:  jane \t\r\nX-Remote-Group:a,b\r\nX-Remote-User-Agent: x\r\n"
    assert policy.forwarded(lines) == b"x-REMOTE-user:  jane \t\r\nX-Remote-Group:a,b\r\n"
    assert policy.username(lines) == b"jane"


def test_forwarded_keeps_exactly_the_allowed_lines_wherever_they_stand() -> None:
    # Against a plain per-line reading of the allow-list, over every order of a mix of kept
    # and dropped lines: the first or the last one dropped, all dropped, empty values.
    policy = HeaderPolicy(HeaderNames())
    kept_names = {b"x-remote-user", b"x-remote-group", b"x-remote-uid", b"audit-id"}
    kept_names |= {b"accept", b"accept-encoding", b"user-agent"}
    pool = [
        b"Host: 10.96.0.1:443\r\n",
        b"X-Remote-User: system:serviceaccount:kube-system:horizontal-pod-autoscaler\r\n",
        b"X-Forwarded-Uri: /apis/external.metrics.k8s.io/v1beta1/namespaces/a/m\r\n",
        b"x-remote-extra-scopes:\r\n",
        b"Authorization: Bearer secret\r\n",
        b"Accept: application/json, */*\r\n",
        b"X-Remote-Group:g\r\n",
        b"X-Remote-Extra-: the prefix alone\r\n",
        b"X-Remote-Extrax: not the prefix\r\n",
    ]

    def reference(lines: list[bytes]) -> bytes:
        def kept(line: bytes) -> bool:
            name = line.partition(b":")[0].lower()
            return name in kept_names or name.startswith(b"x-remote-extra-")

        return b"".join(line for line in lines if kept(line))

    for rotation in range(len(pool)):
        lines = pool[rotation:] + pool[:rotation]
        for cut in range(len(lines) + 1):
            chosen = lines[:cut]
            assert policy.forwarded(b"".join(chosen)) == reference(chosen)
    assert policy.forwarded(b"Host: a\r\nAuthorization: b\r\n") == b""


def _lines(raw: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in raw)


def test_backend_resolver_uses_template_and_overrides() -> None:
    resolver = BackendResolver(
        "https://keda-metrics.{tenant}.svc:6443",
        {
            TenantName("b"): TenantSpec(
                upstream="https://10.0.0.9:443", server_name="b.example", ca_file="/b.crt"
            )
        },
        None,
    )
    a = resolver.for_tenant(TenantName("a"))
    assert (str(a.origin), a.server_name, a.ca_file) == (
        "https://keda-metrics.a.svc:6443",
        None,
        "",
    )
    b = resolver.for_tenant(TenantName("b"))
    assert (str(b.origin), b.server_name, b.ca_file) == ("https://10.0.0.9", "b.example", "/b.crt")
    assert resolver.default is None


@pytest.mark.parametrize(
    ("template", "default"),
    [
        ("https://keda.svc", None),  # no {tenant}
        ("http://{tenant}.svc", None),  # not https
        ("https://{tenant}.svc/path", None),
        ("https://{tenant}.svc", "http://platform-keda"),
        ("https://{tenant}.svc", "https://user@platform-keda"),
    ],
)
def test_bad_upstreams_are_refused_at_start(template: str, default: str | None) -> None:
    with pytest.raises(ConfigError):
        BackendResolver(template, {}, default)


def test_config_from_flags_and_environment(tmp_path: object) -> None:
    config = RouterConfig.from_args(
        [
            "--tls-cert-file=/c",
            "--tls-private-key-file=/k",
            "--tenant-label-key=keda-tenancy.io/tenant",
            "--requestheader-allowed-names=front-proxy-client,aggregator",
            "--requestheader-group-headers=X-Remote-Group",
            "--upstream-timeout=1m30s",
        ],
        {
            "KEDA_TENANCY_ROUTER_SECURE_PORT": "8443",
            "KEDA_TENANCY_ROUTER_DEFAULT_UPSTREAM": "https://platform:443",
        },
    )
    assert config.secure_port == 8443
    assert config.default_upstream == "https://platform:443"
    assert config.requestheader_allowed_names == {"front-proxy-client", "aggregator"}
    assert config.upstream.timeout_s == 90
    assert config.header_names.username == ("X-Remote-User",)
    assert config.requestheader_client_ca_file is None
    assert config.needs_cluster


@pytest.mark.parametrize(
    "argv",
    [
        ["--tenant-label-key=k"],  # no serving certificate
        ["--tls-cert-file=/c", "--tls-private-key-file=/k"],  # no tenancy rule
        [
            "--tls-cert-file=/c",
            "--tls-private-key-file=/k",
            "--tenant-label-key=k",
            "--upstream-timeout=soon",
        ],
        [
            "--tls-cert-file=/c",
            "--tls-private-key-file=/k",
            "--tenant-label-key=k",
            "--upstream-client-cert-file=/x",
        ],
    ],
)
def test_bad_config_exits_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        RouterConfig.from_args(argv, {})
    assert caught.value.code == 2


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("500ms", 0.5),
        ("1m30s", 90),
        ("1h", 3600),
        ("2", 2),
        ("0.25", 0.25),
        ("1.5s", 1.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "-1", "1s2", "1 s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_default_deadlines_fit_the_hpa_and_sizes_parse_like_quantities() -> None:
    config = RouterConfig.from_args(
        ["--tls-cert-file=/c", "--tls-private-key-file=/k", "--tenant-label-key=k"], {}
    )
    # A hung tenant must give an HPA worker back well within the controller's 15 s sync.
    assert config.upstream.timeout_s <= 5
    assert config.upstream.connect_timeout_s < config.upstream.timeout_s
    assert config.upstream.max_response_bytes == 1 << 20
    config = RouterConfig.from_args(
        [
            "--tls-cert-file=/c",
            "--tls-private-key-file=/k",
            "--tenant-label-key=k",
            "--upstream-max-response-bytes=256Ki",
        ],
        {},
    )
    assert config.upstream.max_response_bytes == 256 << 10
    with pytest.raises(SystemExit):
        RouterConfig.from_args(
            [
                "--tls-cert-file=/c",
                "--tls-private-key-file=/k",
                "--tenant-label-key=k",
                "--upstream-max-response-bytes=lots",
            ],
            {},
        )
