//! The access log, written by a thread of its own: every request (`all`, the default), only
//! the failed ones (`errors`), or none (`off`), read from the server's own log after a clean
//! stop (which flushes the thread's lines).

mod common;

use common::{data_dir, Server};

fn access_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains("gpu_replica::access"))
        .collect()
}

#[test]
fn the_access_log_writes_all_requests_only_failed_ones_or_none() {
    for mode in ["all", "errors", "off"] {
        let dir = data_dir();
        let mut server = Server::start_with_env(&dir, None, &[("GPU_REPLICA_ACCESS_LOG", mode)]);
        let (ok, _) = server.call("GET", "/api/v1/replicaSet", None);
        let (missing, _) = server.call("GET", "/api/v1/replicaSet/No_Such.Set", None);
        assert_eq!((ok, missing), (200, 404));
        // A clean stop flushes what the log's thread still holds.
        server.terminate();
        let text = std::fs::read_to_string(dir.join("server.log")).unwrap();
        let lines = access_lines(&text);
        let listed = lines
            .iter()
            .any(|l| l.contains("path=\"/api/v1/replicaSet\"") && l.contains("status=200"));
        let failed = lines
            .iter()
            .any(|l| l.contains("/api/v1/replicaSet/No_Such.Set") && l.contains("status=404"));
        match mode {
            "all" => assert!(listed && failed, "{mode}: {lines:?}"),
            "errors" => assert!(!listed && failed, "{mode}: {lines:?}"),
            _ => assert!(lines.is_empty(), "{mode}: {lines:?}"),
        }
        drop(server);
        let _ = std::fs::remove_dir_all(dir);
    }
}
