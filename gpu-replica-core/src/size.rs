//! Volume sizes as users write them: a whole number and KB, MB, GB or TB (powers of 1024).

use crate::error::{Error, Result};

/// Parses `20GB` into bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let units = [
        ("KB", 1u64 << 10),
        ("MB", 1 << 20),
        ("GB", 1 << 30),
        ("TB", 1 << 40),
    ];
    let (number, unit) = units
        .iter()
        .find_map(|(suffix, unit)| upper.strip_suffix(suffix).map(|n| (n.trim(), *unit)))
        .ok_or_else(|| Error::SizeUnit(text.to_string()))?;
    let number: u64 = number
        .parse()
        .map_err(|_| Error::SizeUnit(text.to_string()))?;
    if number == 0 {
        return Err(Error::InvalidParams(format!(
            "size '{text}' must be more than zero"
        )));
    }
    number
        .checked_mul(unit)
        .ok_or_else(|| Error::InvalidParams(format!("size '{text}' is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("20GB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1 kb").unwrap(), 1024);
        assert_eq!(parse_size("3TB").unwrap(), 3 << 40);
    }

    #[test]
    fn unknown_units_get_their_own_code() {
        assert_eq!(parse_size("20G").unwrap_err().code(), 1029);
        assert_eq!(parse_size("GB").unwrap_err().code(), 1029);
        assert_eq!(parse_size("0MB").unwrap_err().code(), 1000);
    }
}
