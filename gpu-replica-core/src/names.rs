//! The names the engine gives Docker objects, and the rules for the names users give.
//!
//! A user's replicaSet or volume name becomes part of container and volume names
//! (`{name}-{version}`), whose grammar Docker checks case-sensitively:
//! `[A-Za-z0-9][A-Za-z0-9_.-]*`. Image references are stricter (lowercase repository components
//! that may not end in or repeat `.` and `_`), so snapshot and clone-base images are never
//! built from a user's name: they derive from the replicaSet's id, 32 lowercase hex digits given
//! at run and recorded in its head, valid by construction and never shared by two sets (not even
//! by `Foo` and `foo`, nor by a set and an earlier set of the same name).

use crate::error::{Error, Result};

/// The longest replicaSet or volume name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a replicaSet or volume name: `[A-Za-z0-9][A-Za-z0-9_.]*`, at most
/// [`MAX_NAME_LEN`] characters; `-` is refused with its own code (it separates the version).
pub(crate) fn check(name: &str, empty: Error, dash: fn(String) -> Error) -> Result<()> {
    if name.is_empty() {
        return Err(empty);
    }
    if name.contains('-') {
        return Err(dash(name.to_string()));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok {
        return Err(Error::InvalidParams(format!(
            "name '{name}' must begin with a letter or a digit"
        )));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        || name.len() > MAX_NAME_LEN
    {
        return Err(Error::InvalidParams(format!(
            "name '{name}' may hold only letters, digits, '_' and '.' (at most {MAX_NAME_LEN})"
        )));
    }
    Ok(())
}

/// A fresh replicaSet id: 128 random bits as 32 lowercase hex digits.
pub(crate) fn new_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Store(format!("no randomness for a new id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The id of a replicaSet recorded before ids existed: its name in hex, injective and valid
/// for Docker (those sets kept the names of the snapshots they already had).
pub(crate) fn legacy_id(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("n{hex}")
}

/// Container of version `version` of replicaSet `name`.
pub fn container(name: &str, version: u32) -> String {
    format!("{name}-{version}")
}

/// Docker volume of version `version` of volume `name`.
pub fn docker_volume(name: &str, version: u32) -> String {
    format!("{name}-{version}")
}

/// Snapshot image of version `version` of the replicaSet with id `id`.
pub fn snapshot_image(repo: &str, id: &str, version: u32) -> String {
    format!("{repo}/{id}:v{version}")
}

/// The image a clone with id `id` starts from.
pub fn clone_base(repo: &str, id: &str) -> String {
    format!("{repo}/{id}:base")
}

/// Whether `reference` is a Docker image reference (`[host[:port]/]path[:tag][@digest]`),
/// checked the way Docker's reference grammar does, so a bad one is a user error, not a failure
/// of Docker.
pub fn is_image_reference(reference: &str) -> bool {
    if reference.is_empty() || reference.len() > 512 {
        return false;
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-_".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !valid {
            return false;
        }
    }
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let mut chars = tag.chars();
        let first = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !first
            || tag.len() > 128
            || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return false;
        }
    }
    // Docker refuses names over 255 characters (and answers that as a server error).
    if path.len() > 255 {
        return false;
    }
    let mut components: Vec<&str> = path.split('/').collect();
    if components.len() > 1 && is_registry_host(components[0]) {
        components.remove(0);
    }
    !components.is_empty() && components.iter().all(|c| is_path_component(c))
}

/// `registry.example.com`, `host:5000`, `localhost`: a first component that names a registry
/// (dotted labels or `localhost`, an optional port; a bare label needs the port).
fn is_registry_host(component: &str) -> bool {
    let (host, port) = match component.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (component, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let labels_ok = labels
        .iter()
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    labels_ok && (host == "localhost" || labels.len() > 1 || port.is_some())
}

/// `[a-z0-9]+` runs joined by one separator: `.`, `_`, `__` or a run of `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.chars().all(|c| c == '-');
        if !valid {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(name: &str) -> Result<(), u16> {
        check(name, Error::NameEmpty, Error::NameHasDash).map_err(|e| e.code())
    }

    #[test]
    fn names_begin_with_a_letter_or_digit_and_hold_only_safe_characters() {
        for good in [
            "foo",
            "Foo",
            "a...b",
            "x_",
            "y.",
            "9",
            "A_b.C",
            &"a".repeat(128),
        ] {
            assert_eq!(code(good), Ok(()), "{good}");
        }
        assert_eq!(code(""), Err(1002));
        assert_eq!(code("foo-1"), Err(1003));
        for bad in [
            "..",
            ".",
            "_x",
            ".hidden",
            "foo/bar",
            "a b",
            "ü",
            &"a".repeat(129),
        ] {
            assert_eq!(code(bad), Err(1000), "{bad}");
        }
    }

    #[test]
    fn ids_are_valid_image_components_and_differ() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(is_image_reference(&snapshot_image("gpu-replica", &a, 3)));
        assert!(is_image_reference(&clone_base("gpu-replica", &a)));
        assert!(is_image_reference(&snapshot_image(
            "gpu-replica",
            &legacy_id("a...B_"),
            1
        )));
        assert_ne!(legacy_id("Foo"), legacy_id("foo"));
    }

    #[test]
    fn image_references_follow_dockers_grammar() {
        for good in [
            "busybox",
            "ubuntu:22.04",
            "gpu-replica/foo:v1",
            "localhost:5000/a/b:latest",
            "registry.example.com/team/img_x__y.z-w:1.0-rc",
            "nvcr.io/nvidia/pytorch:24.01-py3",
            "img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(is_image_reference(good), "{good}");
        }
        for bad in [
            "",
            "Foo",
            "a...b",
            "x_",
            "y.",
            "a//b",
            "img:",
            ":tag",
            "img:-x",
            "img:a b",
            "..",
            "img@sha256:zz",
            &"a/".repeat(128),
            &format!("{}:v1", "a".repeat(256)),
            &format!("p:1/{}", "a".repeat(252)),
        ] {
            assert!(!is_image_reference(bad), "{bad}");
        }
    }
}
