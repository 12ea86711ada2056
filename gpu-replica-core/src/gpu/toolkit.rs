//! The NVIDIA container toolkit that real GPUs reach containers through (its hooks run as root
//! on the host when a container starts), checked against the container escapes published for
//! it. A toolkit older than a fix is reported, and the container environment its hooks are
//! known to honour (`LD_PRELOAD`: "NVIDIAScape") is refused until it is upgraded. Synthetic
//! (`fake:`) GPUs never go through it.

use std::process::Command;

use serde::{Deserialize, Serialize};

/// An advisory against the toolkit: fixed from `fixed_in` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advisory {
    /// The CVE.
    pub cve: &'static str,
    /// The first toolkit version with the fix.
    pub fixed_in: (u32, u32, u32),
    /// Container environment variables the toolkit's hooks honour, used by this escape.
    pub env: &'static [&'static str],
}

/// The published container escapes through the toolkit.
pub const ADVISORIES: &[Advisory] = &[
    Advisory {
        cve: "CVE-2024-0132",
        fixed_in: (1, 16, 2),
        env: &[],
    },
    Advisory {
        cve: "CVE-2025-23359",
        fixed_in: (1, 17, 4),
        env: &[],
    },
    Advisory {
        cve: "CVE-2025-23266",
        fixed_in: (1, 17, 8),
        env: &["LD_PRELOAD"],
    },
];

/// What the start-up check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolkitReport {
    /// Whether containers get their GPUs through the toolkit (false for `fake:` GPUs).
    pub used: bool,
    /// The version found (`1.17.4`), or none when no toolkit binary answered.
    pub version: Option<String>,
    /// The advisories that version is not fixed for.
    pub vulnerable_to: Vec<String>,
    /// Environment variables refused in requests until the toolkit is upgraded.
    pub refused_env: Vec<String>,
}

/// The version in what `nvidia-container-cli --version` (`cli-version: 1.17.4`) or
/// `nvidia-ctk --version` (`NVIDIA Container Toolkit CLI version 1.17.8`) prints.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let line = text
        .lines()
        .find(|l| l.contains("cli-version") || l.to_lowercase().contains("version"))?;
    let word = line
        .split(|c: char| c.is_whitespace() || c == ':')
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut numbers = word
        .trim_start_matches('v')
        .split(['.', '-', '~', '+'])
        .map(|n| n.parse::<u32>());
    let major = numbers.next()?.ok()?;
    let minor = numbers.next()?.ok()?;
    let patch = numbers.next().and_then(|n| n.ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// What a toolkit of `version` is exposed to (`None`: the version is unknown, so all).
pub fn report(used: bool, version: Option<(u32, u32, u32)>) -> ToolkitReport {
    if !used {
        return ToolkitReport::default();
    }
    let open: Vec<&Advisory> = ADVISORIES
        .iter()
        .filter(|a| version.is_none_or(|v| v < a.fixed_in))
        .collect();
    let mut refused_env: Vec<String> = open
        .iter()
        .flat_map(|a| a.env.iter().map(|e| e.to_string()))
        .collect();
    refused_env.dedup();
    ToolkitReport {
        used,
        version: version.map(|(a, b, c)| format!("{a}.{b}.{c}")),
        vulnerable_to: open.iter().map(|a| a.cve.to_string()).collect(),
        refused_env,
    }
}

/// Asks the host's toolkit binaries for their version.
pub fn installed_version() -> Option<(u32, u32, u32)> {
    ["nvidia-container-cli", "nvidia-ctk"]
        .iter()
        .filter_map(|binary| Command::new(binary).arg("--version").output().ok())
        .filter(|out| out.status.success())
        .find_map(|out| parse_version(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_both_binaries() {
        let cli = "cli-version: 1.17.4\nlib-version: 1.17.4\nbuild date: 2025-01-23T10:53+00:00\n";
        assert_eq!(parse_version(cli), Some((1, 17, 4)));
        let ctk = "NVIDIA Container Toolkit CLI version 1.17.8\ncommit: f202b80a9b9d0db00d9b1d73c0128c8962c55f4d\n";
        assert_eq!(parse_version(ctk), Some((1, 17, 8)));
        assert_eq!(parse_version("version: 1.16.2-1"), Some((1, 16, 2)));
        assert_eq!(parse_version("no toolkit here"), None);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn each_advisory_holds_until_its_fix() {
        let old = report(true, Some((1, 16, 1)));
        assert_eq!(
            old.vulnerable_to,
            vec!["CVE-2024-0132", "CVE-2025-23359", "CVE-2025-23266"]
        );
        assert_eq!(old.refused_env, vec!["LD_PRELOAD"]);
        let between = report(true, Some((1, 17, 4)));
        assert_eq!(between.vulnerable_to, vec!["CVE-2025-23266"]);
        assert_eq!(between.refused_env, vec!["LD_PRELOAD"]);
        let fixed = report(true, Some((1, 17, 8)));
        assert!(fixed.vulnerable_to.is_empty() && fixed.refused_env.is_empty());
        assert_eq!(fixed.version.as_deref(), Some("1.17.8"));
        // Unknown version: treated as exposed to all; fake GPUs: nothing applies.
        assert_eq!(report(true, None).vulnerable_to.len(), 3);
        assert_eq!(report(false, Some((1, 0, 0))), ToolkitReport::default());
    }
}
