//! Strings that reach the operating system through Docker: a container's environment, command,
//! bind paths, an exec's argv and working directory. The kernel takes them as C strings, and
//! Docker reads binds as `src:dest[:mode]`, so a NUL byte or a stray `:` would be refused (or
//! misread) only once Docker is asked. Each is checked here first, naming the field, so bad
//! input is a 1000 before anything is claimed.

use crate::error::{Error, Result};

/// Refuses `value` of `field` when the operating system cannot take it (a NUL byte).
pub(crate) fn os_string(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::InvalidParams(format!(
            "{field} '{}' contains a NUL byte, which no program or path can hold",
            value.escape_debug()
        )));
    }
    Ok(())
}

/// Checks every entry of a list with [`os_string`], naming it `field[i]`.
pub(crate) fn os_strings(field: &str, values: &[String]) -> Result<()> {
    values
        .iter()
        .enumerate()
        .try_for_each(|(i, v)| os_string(&format!("{field}[{i}]"), v))
}

/// One `KEY=value` environment entry: a key before `=` and no NUL byte.
pub(crate) fn env_entry(index: usize, entry: &str) -> Result<()> {
    os_string(&format!("env[{index}]"), entry)?;
    if !entry.contains('=') || entry.starts_with('=') {
        return Err(Error::InvalidParams(format!(
            "env[{index}] '{}' is not KEY=value",
            entry.escape_debug()
        )));
    }
    Ok(())
}

/// A path Docker reads inside a bind (`src:dest`): no NUL byte, no `:` or `,` (which Docker
/// would take as the start of mount options).
pub(crate) fn bind_path(field: &str, path: &str) -> Result<()> {
    os_string(field, path)?;
    if path.contains([':', ',']) {
        return Err(Error::InvalidParams(format!(
            "{field} '{path}' must not contain ':' or ',' (Docker would read them as mount options)"
        )));
    }
    Ok(())
}

/// A working directory for an exec: absolute, no NUL byte.
pub(crate) fn work_dir(dir: &str) -> Result<()> {
    os_string("workDir", dir)?;
    if !dir.starts_with('/') {
        return Err(Error::InvalidParams(format!(
            "workDir '{dir}' must be an absolute path"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_byte_is_refused_with_the_field_named() {
        let e = os_string("cmd[1]", "a\0b").unwrap_err();
        assert_eq!(e.code(), 1000);
        assert!(e.to_string().contains("cmd[1]"), "{e}");
        assert!(e.to_string().contains("a\\0b"), "{e}");
        assert!(os_string("cmd[0]", "bash -lc 'ünïcode ok'").is_ok());
        let e = os_strings("cmd", &["ok".into(), "x\0".into()]).unwrap_err();
        assert!(e.to_string().contains("cmd[1]"), "{e}");
    }

    #[test]
    fn env_entries_are_key_value_without_nul() {
        assert!(env_entry(0, "A=1").is_ok());
        assert!(env_entry(0, "A=").is_ok());
        for bad in ["A", "=1", "A=\0x", "A\0=x"] {
            let e = env_entry(3, bad).unwrap_err();
            assert_eq!(e.code(), 1000);
            assert!(e.to_string().contains("env[3]"), "{e}");
        }
    }

    #[test]
    fn bind_paths_hold_no_mount_options() {
        assert!(bind_path("bind destination", "/data/my dir").is_ok());
        for bad in ["/data:ro", "/a,b", "/a\0"] {
            assert_eq!(bind_path("bind destination", bad).unwrap_err().code(), 1000);
        }
    }

    #[test]
    fn work_dirs_are_absolute() {
        assert!(work_dir("/root").is_ok());
        assert!(work_dir("root").is_err());
        assert!(work_dir("/ro\0ot").is_err());
    }
}
