"""``make bench-oidc``: GitHub OIDC token validations per second, warm JWKS cache, one core.

Tokens are minted by the emulator's issuer code and validated by controller.identity.oidc with
every check on (RS256 signature, issuer, audience, times, claims, subject). The JWKS is
served from memory after one fetch, as in steady state. Printed and saved to
bench/results/oidc.json; nothing asserts a speed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import save  # noqa: E402
from controller.identity.oidc import OidcValidator  # noqa: E402
from controller.model import load_spec  # noqa: E402
from localenv.github.oidc import OidcIssuer  # noqa: E402


def main() -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import yaml

    config = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    spec = load_spec(
        {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("runner-platform:")}
    )
    issuer = OidcIssuer("https://issuer.bench.local")
    documents = {
        f"{issuer.issuer}/.well-known/openid-configuration": issuer.discovery(),
        f"{issuer.issuer}/.well-known/jwks": issuer.jwks(),
    }

    def fetch(url: str) -> dict[str, Any]:
        return documents[url]

    validator = OidcValidator(
        list(spec.github_instances),
        ["sts.amazonaws.com"],
        issuers={"cloud": issuer.issuer},
        fetch=fetch,
    )
    tokens = [
        issuer.mint(issuer.claims("acme-corp/storefront", audience="sts.amazonaws.com", run_id=i))
        for i in range(2000)
    ]
    validator.validate(tokens[0])  # warm the JWKS cache
    rounds, started = 0, time.perf_counter()
    while time.perf_counter() - started < 5:
        for token in tokens:
            validator.validate(token)
        rounds += 1
    elapsed = time.perf_counter() - started
    count = rounds * len(tokens)
    result = {
        "benchmark": "oidc-validation",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "validations": count,
        "seconds": round(elapsed, 3),
        "validations_per_second": round(count / elapsed, 1),
        "microseconds_per_validation": round(elapsed / count * 1e6, 1),
        "target": ">= 5,000/s on one core",
    }
    save("oidc", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
