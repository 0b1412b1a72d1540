"""`graft serve`'s settings, once: defaults, flags, help and validation in one dataclass.

No TensorFlow here, so the CLI builds `graft serve --help` from it cheaply. A value the server
cannot honour (a port past 65535, a message limit gRPC cannot hold) is refused naming its flag,
never wrapped or replaced.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields

from graft.core.config import ConfigError
from graft.core.versions import INT64_MAX

__all__ = [
    "Limits",
    "PILLOW_BOMB_PIXELS",
    "ServeOptions",
    "add_arguments",
    "from_arguments",
    "parse_policy",
]


GRPC_MAX_MESSAGE_MB = (2**31 - 1) // 2**20  # gRPC's message limits are C ints: 2047 MB
PILLOW_BOMB_PIXELS = 2 * 89_478_485  # Pillow refuses images over this (DecompressionBombError)


@dataclass(frozen=True)
class Limits:
    """What one request may cost; each has a `graft serve` flag, named in the refusal."""

    max_pixels: int = 50_000_000  # one image (--max-pixels)
    max_images: int = 1000  # images, or rows, in one request (--max-images)
    max_request_pixels: int = 100_000_000  # all images of one request (--max-request-pixels)
    chunk_pixels: int = 16_000_000  # decoded at once; bigger requests run in chunks


def _opt(default, help: str, **more):
    return field(default=default, metadata={"help": help, **more})


@dataclass(frozen=True)
class ServeOptions:
    """Every `graft serve` flag is a field (--model-base-path is model_base_path)."""

    model_base_path: str = field(metadata={"help": "folder of numbered SavedModel versions"})
    model_name: str = field(metadata={"help": "name clients ask for"})
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8500, "gRPC port (0: any free port)")
    rest_port: int = _opt(
        0, "REST/JSON port (/v1/models/NAME:predict); REST is off unless --rest-port is given"
    )
    version_policy: str = _opt("latest", "latest | all | specific:N[,M]")
    poll_seconds: float = _opt(2.0, "how often to look for new versions", metavar="SECONDS")
    max_message_mb: int = _opt(32, "gRPC message and REST body limit, in MB")
    max_pixels: int = _opt(Limits.max_pixels, "larger images: RESOURCE_EXHAUSTED (HTTP 413)")
    max_images: int = _opt(Limits.max_images, "images (rows) per request")
    max_request_pixels: int = _opt(Limits.max_request_pixels, "all images of one request")
    decode_chunk_pixels: int = _opt(
        Limits.chunk_pixels, "bigger requests are decoded and run in chunks of about this many"
    )
    load_retries: int = _opt(5, "retries of a version that failed to load")
    load_retry_interval: float = _opt(60.0, "wait between load retries", metavar="SECONDS")
    ssl_cert: str | None = _opt(None, "PEM certificate: TLS for gRPC and REST")
    ssl_key: str | None = _opt(None, "PEM private key for --ssl-cert")
    ssl_client_ca: str | None = _opt(None, "PEM CA: require client certificates signed by it")
    reflection: bool = _opt(False, "enable gRPC server reflection")
    workers: int = _opt(16, "gRPC worker threads")
    rest_workers: int = _opt(16, "REST requests worked on at once (more wait their turn)")
    rest_max_connections: int = _opt(
        1000, "open REST connections and requests at most; more are answered 503"
    )
    rest_idle_timeout: float = _opt(
        30.0, "close REST connections idle this long (also between body chunks)", metavar="SECONDS"
    )

    def __post_init__(self):
        for problem in self.problems():
            raise ConfigError(f"graft serve: {problem}")

    def problems(self) -> list[str]:
        """What is wrong, one line per flag; empty when every value can be honoured."""
        out = []

        def need(ok: bool, flag: str, value, rule: str):
            if not ok:
                out.append(f"--{flag} {value}: {rule}")

        need(0 <= self.port <= 65535, "port", self.port, "must be 0..65535 (0: any free port)")
        need(0 <= self.rest_port <= 65535, "rest-port", self.rest_port, "must be 0..65535")
        need(
            self.rest_port == 0 or self.rest_port != self.port,
            "rest-port",
            self.rest_port,
            "must differ from --port",
        )
        need(
            1 <= self.max_message_mb <= GRPC_MAX_MESSAGE_MB,
            "max-message-mb",
            self.max_message_mb,
            f"must be 1..{GRPC_MAX_MESSAGE_MB} (gRPC's message limit is a 32-bit byte count)",
        )
        need(
            1 <= self.max_pixels <= PILLOW_BOMB_PIXELS,
            "max-pixels",
            self.max_pixels,
            f"must be 1..{PILLOW_BOMB_PIXELS:,} (Pillow refuses larger images as "
            "decompression bombs)",
        )
        for flag in ("max_images", "max_request_pixels", "decode_chunk_pixels"):
            value = getattr(self, flag)
            need(value >= 1, flag.replace("_", "-"), value, "must be at least 1")
        for flag in ("workers", "rest_workers", "rest_max_connections"):
            value = getattr(self, flag)
            need(value >= 1, flag.replace("_", "-"), value, "must be at least 1")
        need(self.load_retries >= 0, "load-retries", self.load_retries, "must be 0 or more")
        for flag in ("poll_seconds", "rest_idle_timeout"):
            value = getattr(self, flag)
            need(value > 0, flag.replace("_", "-"), value, "must be more than 0 seconds")
        need(
            self.load_retry_interval >= 0,
            "load-retry-interval",
            self.load_retry_interval,
            "must be 0 or more seconds",
        )
        try:
            parse_policy(self.version_policy)
        except ValueError as e:
            out.append(str(e))
        if bool(self.ssl_cert) != bool(self.ssl_key):
            out.append("--ssl-cert and --ssl-key go together")
        if self.ssl_client_ca and not self.ssl_cert:
            out.append("--ssl-client-ca needs --ssl-cert and --ssl-key")
        return out

    @property
    def limits(self) -> Limits:
        return Limits(
            max_pixels=self.max_pixels,
            max_images=self.max_images,
            max_request_pixels=self.max_request_pixels,
            chunk_pixels=self.decode_chunk_pixels,
        )

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 2**20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ServeOptions field, with its default and help.

    Args:
        parser: the `graft serve` parser, changed in place.
    """
    for f in fields(ServeOptions):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        if f.default is MISSING:
            parser.add_argument(flag, required=True, **meta)
        elif f.type == "bool":
            parser.add_argument(flag, action="store_true", **meta)
        else:
            kind = {"int": int, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=f.default, **meta)


def from_arguments(args: argparse.Namespace) -> ServeOptions:
    """The ServeOptions a parsed `graft serve` command line asks for.

    Args:
        args: the namespace a parser given add_arguments returned.

    Returns:
        The options, one per ServeOptions field.
    """
    return ServeOptions(**{f.name: getattr(args, f.name) for f in fields(ServeOptions)})


def parse_policy(text: str) -> tuple[str, set[int]]:
    """--version-policy: latest, all, or specific:N[,M] (at least one version, each a number
    from 1 to 2**63-1: an empty list would load nothing and never become healthy).

    Args:
        text: the flag's value.

    Returns:
        (policy, the versions a specific policy names; empty otherwise).

    Raises:
        ValueError: anything else, naming the flag and the forms it takes.
    """
    if text in ("latest", "all"):
        return text, set()
    if text.startswith("specific:"):
        try:
            wanted = {int(v) for v in text.split(":", 1)[1].split(",") if v.strip()}
        except ValueError:
            wanted = set()
        if wanted and all(1 <= v <= INT64_MAX for v in wanted):
            return "specific", wanted
    raise ValueError(
        f"--version-policy must be latest, all or specific:N[,M] with at least one version "
        f"from 1 to 2**63-1, got '{text}'"
    )
