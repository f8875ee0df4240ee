"""cluster.yaml: valid for the installed Ray's cluster launcher, and our own invariants."""
from __future__ import annotations

import copy
import ipaddress
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _workers(cluster: dict) -> dict[str, dict]:
    return {name: t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]}


def test_valid_against_rays_schema(cluster: dict) -> None:
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    # What `ray up` does before touching AWS: merge the provider's defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_ray_image_is_the_installed_and_pinned_ray(cluster: dict) -> None:
    repo, _, tag = cluster["docker"]["image"].partition(":")
    assert repo == "rayproject/ray"
    version, *rest = tag.split("-")
    assert version == ray.__version__
    assert rest and re.fullmatch(r"gpu|cu\d+", rest[-1]), "the GPU image (-gpu or -cuXXX)"
    assert not {"head_image", "worker_image"} & cluster["docker"].keys()  # one image everywhere
    assert re.search(rf'"ray\[[\w,]+\]=={re.escape(version)}"', (REPO / "pyproject.toml").read_text())  # the pin


def test_gpu_workers_scale_from_zero_on_spot(cluster: dict) -> None:
    workers = _workers(cluster)
    assert workers
    for t in workers.values():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert cluster["max_workers"] >= max(t["max_workers"] for t in workers.values())
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0  # no work on the head


def _covers(rule: dict, port: int) -> bool:
    if str(rule.get("IpProtocol")) == "-1":
        return True
    return int(rule.get("FromPort", -1)) <= port <= int(rule.get("ToPort", -1)) or rule.get("FromPort") == -1


def _public(rule: dict) -> bool:
    cidrs = [r["CidrIp"] for r in rule.get("IpRanges", [])] + [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
    return any(ipaddress.ip_network(c).prefixlen == 0 for c in cidrs)


def test_dashboard_only_through_port_forwarding(cluster: dict) -> None:
    rules = cluster["provider"].get("security_group", {}).get("IpPermissions", [])
    assert not [r for r in rules if _public(r) and (_covers(r, 8265) or _covers(r, 6379))]
    for t in cluster["available_node_types"].values():
        assert "SecurityGroupIds" not in t["node_config"]  # Ray's own group, with the rules above
    start = " ".join(cluster["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", start)
    assert hosts and all(h in ("127.0.0.1", "localhost") for h in hosts)


def test_setup_installs_this_package_from_the_synced_repo(cluster: dict) -> None:
    mounted = [remote for remote, local in cluster["file_mounts"].items() if local in (".", "./")]
    assert mounted
    installs = [shlex.split(c) for c in cluster["setup_commands"] if "pip" in c]
    assert any("install" in c and "-e" in c and c[c.index("-e") + 1] in mounted for c in installs)


def test_credentials_come_from_instance_roles_only(cluster: dict) -> None:
    for t in cluster["available_node_types"].values():
        assert t["node_config"]["IamInstanceProfile"]
    text = (REPO / "cluster.yaml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|AWS_SECRET|AWS_ACCESS_KEY",
                         text, re.I)
    assert "ssh_private_key" not in cluster["auth"]
