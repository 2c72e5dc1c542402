//! Reading files named at run time (model reloads): regular files only, bounded in size, never
//! blocking on a FIFO or a device, and confined to the directories the operator allowed.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Why a file was not read. The messages describe the rule broken, never the file system
/// (a caller learns nothing about what exists outside the allowed directories).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    /// The path leaves the allowed directories (or uses `..`).
    #[error(
        "must name a file inside model.reload_dirs (a bare file name is looked up in the first one)"
    )]
    Outside,
    /// Inside the allowed directories, but not a regular file that can be read.
    #[error("no readable regular file by that name in model.reload_dirs")]
    NotRegular,
    /// Larger than the cap.
    #[error("the file is larger than {limit} bytes (model.max_model_bytes)")]
    TooLarge {
        /// The cap, in bytes.
        limit: u64,
    },
}

/// Reads `path` whole if it is a regular file of at most `max_bytes`. The file is opened
/// without blocking (a FIFO with no writer would otherwise hang the open) and checked on the
/// open handle, so a swap between the check and the read cannot slip a device in; the read
/// itself stops at `max_bytes + 1`, so a file growing meanwhile is refused too.
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Vec<u8>, std::io::Error> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(bytes)
}

fn too_large(max_bytes: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::FileTooLarge,
        format!("larger than {max_bytes} bytes"),
    )
}

/// Resolves a caller's `requested` path against the allowed directories: a relative path is
/// taken inside the first one; `..` is refused outright; the real path (symlinks followed)
/// must lie inside one of them.
pub fn confine(requested: &Path, allowed: &[PathBuf]) -> Result<PathBuf, FileError> {
    if requested.components().any(|c| c == Component::ParentDir) {
        return Err(FileError::Outside);
    }
    let first = allowed.first().ok_or(FileError::Outside)?;
    let joined = if requested.is_relative() {
        first.join(requested)
    } else {
        requested.to_path_buf()
    };
    let roots: Vec<PathBuf> = allowed
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
    // Check the words before touching the path, so that nothing outside is even looked up.
    let lexically_inside = allowed.iter().chain(&roots).any(|d| joined.starts_with(d));
    if !lexically_inside {
        return Err(FileError::Outside);
    }
    let real = std::fs::canonicalize(&joined).map_err(|_| FileError::NotRegular)?;
    if !roots.iter().any(|d| real.starts_with(d)) {
        return Err(FileError::Outside);
    }
    Ok(real)
}

/// [`confine`] then [`read_regular`], with the errors a caller may see.
pub fn read_confined(
    requested: &Path,
    allowed: &[PathBuf],
    max_bytes: u64,
) -> Result<(PathBuf, Vec<u8>), FileError> {
    let real = confine(requested, allowed)?;
    match read_regular(&real, max_bytes) {
        Ok(bytes) => Ok((real, bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            Err(FileError::TooLarge { limit: max_bytes })
        }
        Err(_) => Err(FileError::NotRegular),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_inside_the_allowed_directories_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = vec![dir.path().to_path_buf()];
        std::fs::write(dir.path().join("m.json"), b"{}").unwrap();
        let (real, bytes) = read_confined(Path::new("m.json"), &allowed, 10).unwrap();
        assert_eq!(bytes, b"{}");
        assert!(real.ends_with("m.json"));
        let abs = dir.path().join("m.json");
        assert!(read_confined(&abs, &allowed, 10).is_ok());

        assert_eq!(
            read_confined(Path::new("../m.json"), &allowed, 10),
            Err(FileError::Outside)
        );
        assert_eq!(
            read_confined(Path::new("/etc/passwd"), &allowed, 1 << 20),
            Err(FileError::Outside)
        );
        // Missing and existing-but-outside answer alike.
        assert_eq!(
            read_confined(Path::new("/no/such/file"), &allowed, 10),
            Err(FileError::Outside)
        );
        assert_eq!(
            read_confined(Path::new("missing.json"), &allowed, 10),
            Err(FileError::NotRegular)
        );
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(
            read_confined(Path::new("sub"), &allowed, 10),
            Err(FileError::NotRegular)
        );
        std::fs::write(dir.path().join("big.json"), vec![b' '; 11]).unwrap();
        assert_eq!(
            read_confined(Path::new("big.json"), &allowed, 10),
            Err(FileError::TooLarge { limit: 10 })
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_directories_fifos_and_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = vec![dir.path().to_path_buf()];
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("out.json")).unwrap();
        assert_eq!(
            read_confined(Path::new("out.json"), &allowed, 1 << 20),
            Err(FileError::Outside)
        );
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.json")).unwrap();
        assert_eq!(
            read_confined(Path::new("zero.json"), &allowed, 1 << 20),
            Err(FileError::Outside)
        );
        let fifo = dir.path().join("fifo.json");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Returns at once (no writer is ever attached), refused as not a regular file.
        assert_eq!(
            read_confined(&fifo, &allowed, 1 << 20),
            Err(FileError::NotRegular)
        );
        // The unconfined reader refuses devices as well.
        assert!(read_regular(Path::new("/dev/zero"), 1 << 20).is_err());
    }
}
