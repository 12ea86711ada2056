//! Host port choice: the lowest ports of the configured range that nobody has claimed and
//! nothing on the host listens on.

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, TcpListener};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// An inclusive range of host ports, `40000-65535` by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortRange {
    /// How many ports the range holds.
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    /// Whether the range is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> PortRange {
        PortRange {
            start: 40000,
            end: 65535,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl FromStr for PortRange {
    type Err = Error;

    fn from_str(s: &str) -> Result<PortRange, Error> {
        let bad = || Error::InvalidParams(format!("port range '{s}' is not START-END"));
        let (start, end) = s.split_once('-').ok_or_else(bad)?;
        let start: u16 = start.trim().parse().map_err(|_| bad())?;
        let end: u16 = end.trim().parse().map_err(|_| bad())?;
        if start == 0 || start > end {
            return Err(bad());
        }
        Ok(PortRange { start, end })
    }
}

/// Whether nothing on the host listens on `port` (Docker's proxy binds all addresses).
pub fn host_port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// Picks `count` ports in `range` that are not in `taken` and pass `is_free`.
pub fn pick_ports(
    range: PortRange,
    taken: &HashSet<u16>,
    count: usize,
    is_free: impl Fn(u16) -> bool,
) -> Option<Vec<u16>> {
    let picked: Vec<u16> = (range.start..=range.end)
        .filter(|p| !taken.contains(p) && is_free(*p))
        .take(count)
        .collect();
    (picked.len() == count).then_some(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            "40000-40010".parse::<PortRange>().unwrap(),
            PortRange {
                start: 40000,
                end: 40010
            }
        );
        assert!("40010-40000".parse::<PortRange>().is_err());
        assert!("abc".parse::<PortRange>().is_err());
    }

    #[test]
    fn claimed_and_busy_ports_are_skipped() {
        let range = PortRange {
            start: 100,
            end: 110,
        };
        let taken = HashSet::from([100, 101]);
        let picked = pick_ports(range, &taken, 2, |p| p != 102).unwrap();
        assert_eq!(picked, vec![103, 104]);
        assert!(pick_ports(range, &taken, 10, |_| true).is_none());
    }

    #[test]
    fn a_port_someone_listens_on_is_not_free() {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!host_port_is_free(port));
    }
}
