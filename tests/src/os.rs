//! What the operating system can tell a test about what a process left
//! behind: processes still running, files held open after deletion, files
//! left in a directory.

use std::path::{Path, PathBuf};

/// Processes (pid, command line) whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        // A zombie has an empty command line: it holds nothing any more.
        if cmdline.contains(needle) && pid != std::process::id() as i32 {
            out.push((pid, cmdline.trim().to_string()));
        }
    }
    out
}

/// Files process `pid` holds open that were deleted (`/proc/PID/fd` links
/// ending in " (deleted)"), below `under`.
pub fn deleted_open_files(pid: i32, under: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return out };
    for e in rd.flatten() {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.to_string_lossy().to_string();
            if t.ends_with(" (deleted)") && t.starts_with(&*under.to_string_lossy()) {
                out.push(t);
            }
        }
    }
    out
}

/// Every file below `dir` (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Files below `dir` other than lock files (the agent's claim on its
/// staging area): what a transfer left behind.
pub fn files_left(dir: &Path) -> Vec<PathBuf> {
    files_under(dir).into_iter().filter(|p| p.extension().is_none_or(|e| e != "lock")).collect()
}
