//! Which Docker network a set's container joins, and the subnets that per-owner networks take
//! from the operator's pool.
//!
//! By default each owner's containers join a bridge network of their own
//! ([`NetworkMode::PerOwner`]): Docker's isolation rules keep one bridge from reaching another,
//! and its DNS answers a set's name only on the set's own network. The engine makes such a
//! network on first use, with the next free subnet of the [`NetworkPool`], and removes it once
//! no container of this store uses it.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where sets' containers are attached.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NetworkMode {
    /// A bridge network per owner, made and removed by the engine (the default).
    #[default]
    PerOwner,
    /// Docker's default bridge, shared by every set (and every other container): no walls.
    Shared,
    /// One network the operator made, joined by every set; the engine neither makes nor
    /// removes it.
    Named(String),
}

impl FromStr for NetworkMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<NetworkMode> {
        match s {
            "per-owner" => Ok(NetworkMode::PerOwner),
            "shared" => Ok(NetworkMode::Shared),
            name if is_network_name(name) => Ok(NetworkMode::Named(name.to_string())),
            other => Err(Error::InvalidParams(format!(
                "network '{other}' is not per-owner, shared or a Docker network name"
            ))),
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkMode::PerOwner => f.write_str("per-owner"),
            NetworkMode::Shared => f.write_str("shared"),
            NetworkMode::Named(name) => f.write_str(name),
        }
    }
}

/// Whether Docker takes `name` as a network name: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
fn is_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The IPv4 range per-owner networks take their subnets from: `10.213.0.0/16` cut into `/24`s
/// by default (256 owners with sets on one host at once, 253 containers each). Docker's own
/// default pools (172.17–31.0.0/16, 192.168.0.0/16) are left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPool {
    base: u32,
    prefix: u8,
    subnet_prefix: u8,
}

impl Default for NetworkPool {
    fn default() -> NetworkPool {
        NetworkPool {
            base: u32::from(Ipv4Addr::new(10, 213, 0, 0)),
            prefix: 16,
            subnet_prefix: 24,
        }
    }
}

impl NetworkPool {
    /// The pool `cidr` (`10.213.0.0/16`) cut into subnets of prefix length `subnet_prefix`.
    pub fn new(cidr: &str, subnet_prefix: u8) -> Result<NetworkPool> {
        let bad = |why: &str| Error::InvalidParams(format!("network pool '{cidr}': {why}"));
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| bad("write it as ADDRESS/PREFIX, e.g. 10.213.0.0/16"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| bad("the prefix length is not 0 to 32"))?;
        if !(prefix..=29).contains(&subnet_prefix) {
            return Err(bad(&format!(
                "a subnet prefix of /{subnet_prefix} must lie between the pool's /{prefix} and /29"
            )));
        }
        let base = u32::from(addr);
        if base & !mask(prefix) != 0 {
            return Err(bad("the address has bits set past the prefix"));
        }
        Ok(NetworkPool {
            base,
            prefix,
            subnet_prefix,
        })
    }

    /// How many per-owner networks (owners with sets on one host at once) the pool holds.
    pub fn capacity(&self) -> u64 {
        1u64 << (self.subnet_prefix - self.prefix)
    }

    /// Containers one owner's network holds (its subnet less network, gateway and broadcast).
    pub fn hosts_per_network(&self) -> u64 {
        (1u64 << (32 - self.subnet_prefix)) - 3
    }

    /// The pool's subnets in order, as `a.b.c.d/p`.
    pub fn subnets(&self) -> impl Iterator<Item = String> + '_ {
        let step = 1u64 << (32 - self.subnet_prefix);
        (0..self.capacity()).map(move |i| {
            let addr = Ipv4Addr::from((u64::from(self.base) + i * step) as u32);
            format!("{addr}/{}", self.subnet_prefix)
        })
    }

    /// The subnets' prefix length.
    pub fn subnet_prefix(&self) -> u8 {
        self.subnet_prefix
    }
}

impl fmt::Display for NetworkPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// Where an engine puts sets' containers: the mode and, for per-owner networks, the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// Per owner, shared, or one named network.
    pub mode: NetworkMode,
    /// Where per-owner networks take their subnets.
    pub pool: NetworkPool,
    /// Whether to put the host firewall [`Guard`] in place at start (per-owner mode, Docker on
    /// this host, as root).
    pub guard: bool,
}

impl Default for NetworkPolicy {
    fn default() -> NetworkPolicy {
        NetworkPolicy {
            mode: NetworkMode::PerOwner,
            pool: NetworkPool::default(),
            guard: true,
        }
    }
}

/// The host firewall rule that keeps per-owner networks apart even while Docker rewrites its
/// own rules.
///
/// Docker isolates bridge networks with a jump from `FORWARD` to `DOCKER-ISOLATION-STAGE-1`,
/// but it deletes and re-inserts that jump whenever any network is created or removed; in that
/// window a container reaches another bridge's containers (measured here: 3 of 60 cross-owner
/// connections got through while networks were being made, 0 with this rule). The rule lives
/// in the `mangle` table, which Docker does not touch: routed (not bridged) traffic between two
/// addresses of the pool is dropped. Traffic inside one owner's bridge is bridged, and traffic
/// from outside or to the internet does not have both ends in the pool, so neither is affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Guard {
    /// Whether the rule is in place.
    pub installed: bool,
    /// The rule, as `iptables -t mangle` arguments.
    pub rule: String,
    /// Why it is not in place (no `iptables`, not root, Docker on another host).
    pub reason: Option<String>,
}

impl NetworkPool {
    /// The arguments of [`Guard`]'s rule after `-t mangle -I|-C`.
    pub fn guard_rule(&self) -> Vec<String> {
        let pool = self.to_string();
        [
            "FORWARD",
            "-s",
            &pool,
            "-d",
            &pool,
            "-m",
            "physdev",
            "!",
            "--physdev-is-bridged",
        ]
        .into_iter()
        .chain(["-j", "DROP"])
        .map(str::to_string)
        .collect()
    }
}

/// Puts [`Guard`]'s rule for `pool` in place unless it is there (`iptables -w`, so concurrent
/// firewall changes wait their turn). Only meaningful where Docker runs on this host.
pub fn install_guard(pool: &NetworkPool) -> Guard {
    let rule = pool.guard_rule();
    let shown = rule.join(" ");
    let iptables = |op: &str| {
        std::process::Command::new("iptables")
            .args(["-w", "-t", "mangle", op])
            .args(&rule)
            .output()
    };
    let outcome = match iptables("-C") {
        Ok(out) if out.status.success() => Ok(()),
        Ok(_) => match iptables("-I") {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(format!("iptables: {e}")),
    };
    Guard {
        installed: outcome.is_ok(),
        rule: shown,
        reason: outcome.err(),
    }
}

/// The name of `owner`'s network for the store `store` (its id): `gpu-replica-{tag}-{owner}`,
/// where the tag is 8 hex digits of the id's SHA-256, so that two servers sharing one Docker
/// never share an owner's network. Owner names hold no `-`, so the name reads back
/// unambiguously.
pub fn owner_network(store: &str, owner: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(store.as_bytes());
    let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("gpu-replica-{tag}-{owner}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_is_cut_into_subnets_in_order() {
        let pool = NetworkPool::default();
        assert_eq!(pool.to_string(), "10.213.0.0/16");
        assert_eq!(pool.capacity(), 256);
        assert_eq!(pool.hosts_per_network(), 253);
        let subnets: Vec<String> = pool.subnets().collect();
        assert_eq!(subnets[0], "10.213.0.0/24");
        assert_eq!(subnets[1], "10.213.1.0/24");
        assert_eq!(subnets[255], "10.213.255.0/24");
        let small = NetworkPool::new("192.0.2.0/24", 26).unwrap();
        assert_eq!(
            small.subnets().collect::<Vec<_>>(),
            [
                "192.0.2.0/26",
                "192.0.2.64/26",
                "192.0.2.128/26",
                "192.0.2.192/26"
            ]
        );
        assert_eq!(small.hosts_per_network(), 61);
    }

    #[test]
    fn bad_pools_are_refused_with_the_reason() {
        for (cidr, prefix, why) in [
            ("10.213.0.0", 24, "ADDRESS/PREFIX"),
            ("10.213.0.300/16", 24, "IPv4"),
            ("10.213.0.0/33", 24, "0 to 32"),
            ("10.213.1.0/16", 24, "bits set"),
            ("10.213.0.0/16", 12, "between"),
            ("10.213.0.0/16", 30, "between"),
        ] {
            let e = NetworkPool::new(cidr, prefix).unwrap_err();
            assert_eq!(e.code(), 1000);
            assert!(e.to_string().contains(why), "{cidr}/{prefix}: {e}");
        }
    }

    #[test]
    fn modes_read_from_their_flag_words() {
        assert_eq!(
            "per-owner".parse::<NetworkMode>().unwrap(),
            NetworkMode::PerOwner
        );
        assert_eq!(
            "shared".parse::<NetworkMode>().unwrap(),
            NetworkMode::Shared
        );
        assert_eq!(
            "lab_net.1".parse::<NetworkMode>().unwrap(),
            NetworkMode::Named("lab_net.1".into())
        );
        assert!("-x".parse::<NetworkMode>().is_err());
        assert!("a b".parse::<NetworkMode>().is_err());
        let name = owner_network("18ecbf9d9a75271e4755", "Bob.Smith_2");
        assert!(name.starts_with("gpu-replica-") && name.ends_with("-Bob.Smith_2"));
        assert_eq!(name.len(), "gpu-replica-12345678-Bob.Smith_2".len());
        // Stores made in the same second do not share a network.
        assert_ne!(name, owner_network("18ecbf9d9a75271e4756", "Bob.Smith_2"));
    }
}
