//! Loading the optional TOML config files of the agent and the reconciler: one reader, so
//! both name the file and the problem the same way.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config file (or a file it names, such as a token file) could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (unknown keys included).
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Reads a whole text file, naming it in the error.
pub fn read_text(path: &Path) -> Result<String, ConfigFileError> {
    std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and parses a TOML config file into `T`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = read_text(path)?;
    toml::from_str(&text).map_err(|e| ConfigFileError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
    }

    #[test]
    fn loads_reports_missing_files_and_bad_toml_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "name = \"x\"\n").unwrap();
        assert_eq!(load_toml::<Sample>(&good).unwrap().name, "x");

        let missing = dir.path().join("missing.toml");
        let err = load_toml::<Sample>(&missing).unwrap_err();
        assert!(matches!(err, ConfigFileError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.toml"), "{err}");

        let unknown = dir.path().join("unknown.toml");
        std::fs::write(&unknown, "name = \"x\"\ncolour = 1\n").unwrap();
        let err = load_toml::<Sample>(&unknown).unwrap_err();
        assert!(matches!(err, ConfigFileError::Parse { .. }), "{err}");
        assert!(
            err.to_string().contains("unknown.toml") && err.to_string().contains("colour"),
            "{err}"
        );
    }
}
