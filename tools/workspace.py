"""One pilot workspace directory shared by broker-config, provision and calibrate.

Why one layout object: the broker, the gateway and the provisioning tool must agree on where the
password file, the ACL, the CA and the meter registry are, and a typo in a path is a silent outage.

    DIR/broker/mosquitto.conf  passwd (0600)  acl  pki/{ca.crt,ca.der,server.*}  data/  log/
                               (everything the broker's user needs: `chown -R mosquitto:` is safe)
    DIR/ca/ca.key              the CA private key (0600, folder 0700): never in the broker's folder
    DIR/broker.json            how meters and the gateway reach the broker (host, port, CA) - public
    DIR/gateway.password       the gateway's broker password (0600; gateway --password-file)
    DIR/keys/                  the gateway's keys: utility.pub.json, meter-keys.json (0600)
    DIR/registry/meters.json   meter metadata, no keys (feeder, DP parameters, attributes)
    DIR/decryption/            the decryption role's folder (keys init --secret-dir), never the gateway's
    DIR/meters/<id>/config.json  one meter's config incl. its master key (0600)
    DIR/rotation.log           one JSON line per key rotation (no key material)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import ToolError
from .pki import PkiPaths


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def broker_conf(self) -> Path:
        return self.broker_dir / "mosquitto.conf"

    @property
    def passwd(self) -> Path:
        return self.broker_dir / "passwd"

    @property
    def acl(self) -> Path:
        return self.broker_dir / "acl"

    @property
    def pki(self) -> PkiPaths:
        return PkiPaths(self.broker_dir / "pki", key_dir=self.ca_key_dir)

    @property
    def ca_key_dir(self) -> Path:
        return self.root / "ca"

    @property
    def legacy_ca_key(self) -> Path:
        """Where workspaces made before the CA key moved kept it (inside the broker's folder)."""
        return self.broker_dir / "pki" / "ca.key"

    @property
    def broker_info(self) -> Path:
        return self.root / "broker.json"

    @property
    def gateway_password(self) -> Path:
        return self.root / "gateway.password"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def registry(self) -> Path:
        return self.root / "registry" / "meters.json"

    @property
    def role_dir(self) -> Path:
        return self.root / "decryption"

    def meter_dir(self, meter_id: str) -> Path:
        return self.root / "meters" / meter_id

    def meter_config(self, meter_id: str) -> Path:
        return self.meter_dir(meter_id) / "config.json"

    @property
    def rotation_log(self) -> Path:
        return self.root / "rotation.log"

    def load_broker_info(self) -> dict[str, Any]:
        """broker.json written by broker-config; a clear error if the broker was never configured."""
        try:
            return json.loads(self.broker_info.read_text())
        except FileNotFoundError:
            raise ToolError(f"{self.broker_info} not found: run `meterveil broker-config --workspace "
                            f"{self.root}` first (it creates the CA, password file and ACL)") from None
        except json.JSONDecodeError as e:
            raise ToolError(f"{self.broker_info} is not valid JSON ({e.msg}); re-run broker-config") from None
