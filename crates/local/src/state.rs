//! The state file `data_dir/instances.json`: every live instance, so that the next platform run
//! can find and end what a crashed run left behind.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::InstanceCgroup;

/// The state file's name inside the data directory.
pub(crate) const STATE_FILE: &str = "instances.json";

/// What is recorded for one live instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    pub id: String,
    pub pid: i32,
    pub pgid: i32,
    pub port: u16,
    pub cgroup: InstanceCgroup,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    pub labels: BTreeMap<String, String>,
    /// The `KAPPA_INSTANCE_ID` its processes carry when it differs from `id` (an instance
    /// started from a spare sandbox keeps the spare's mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    instances: Vec<InstanceRecord>,
}

/// Reads the records of the state file; a missing file is empty.
pub(crate) fn read(data_dir: &Path) -> io::Result<Vec<InstanceRecord>> {
    let path = data_dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(state.instances)
}

/// Replaces the state file atomically (write a temporary file, rename it over the old one).
///
/// Deliberately without `fsync`: the file only has to survive the platform process dying (a
/// reader then sees the old or the new file, never a mix). After a machine crash no instance
/// process survives either, and an unreadable file is ignored with a warning, so a disk flush
/// on every instance start and exit would buy nothing.
pub(crate) fn write(data_dir: &Path, records: Vec<InstanceRecord>) -> io::Result<()> {
    let path = data_dir.join(STATE_FILE);
    let tmp: PathBuf = data_dir.join(format!(".{STATE_FILE}.tmp-{}", std::process::id()));
    let bytes =
        serde_json::to_vec_pretty(&StateFile { instances: records }).map_err(io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    drop(file);
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        let record = InstanceRecord {
            id: "i-1".into(),
            pid: 10,
            pgid: 10,
            port: 4000,
            cgroup: InstanceCgroup::default(),
            started_at: 1,
            labels: BTreeMap::from([("env".to_owned(), "py".to_owned())]),
            mark: None,
        };
        write(dir.path(), vec![record.clone()]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![record]);
        write(dir.path(), vec![]).unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }
}
