//! Durable file writes shared by every piece of state the package persists.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that a reader (or a process restarted after a crash at any
/// moment) sees either the old file or the complete new one, never a torn mix:
/// temp file in the same directory, fsync, rename over the target, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // The rename is only durable once the directory entry is.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a whole file as UTF-8 with an error message that names the path, refusing
/// directories and anything larger than `max_bytes` (a corrupt or hostile path must not
/// make the host allocate gigabytes).
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String, String> {
    let bytes = read_bytes(path, max_bytes)?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// Reads a whole file as bytes (bounded like `read_text`), for formats that must survive
/// damage: one invalid byte must not hide the rest of the file.
pub fn read_bytes(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_dir() {
        return Err(format!("{} is a directory, not a file", path.display()));
    }
    if meta.len() > max_bytes {
        return Err(format!(
            "{} is {} bytes, larger than the {} bytes allowed",
            path.display(),
            meta.len(),
            max_bytes
        ));
    }
    read_in_pieces(path, meta.len(), max_bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Bytes per `read()`. One `read()` of a whole 55 MB state file into fresh memory on a
/// worker stalled the JS thread for ~40 ms (the kernel faults the destination in under
/// the process's address-space lock, which the JS thread then waits for); in 1 MB pieces
/// the stall was gone and the read took as long (measured with Node's own
/// `readFileSync` against `readSync` in pieces, on a worker thread).
const READ_PIECE: u64 = 1 << 20;

fn read_in_pieces(path: &Path, len: u64, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut buf = Vec::with_capacity(len.min(max_bytes) as usize);
    loop {
        let got = (&mut f).take(READ_PIECE).read_to_end(&mut buf)?;
        if got == 0 {
            return Ok(buf);
        }
        if buf.len() as u64 > max_bytes {
            return Err(std::io::Error::other(format!(
                "larger than the {max_bytes} bytes allowed"
            )));
        }
    }
}

/// An exclusive advisory lock on a lock file, held until dropped. The holder writes its
/// process id into the file so that a refused caller can say who holds it.
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Takes the lock without waiting. `Err` names the holder's pid when it is known.
    /// The same lock the registry takes around manifest writes (`File::lock`, i.e. `flock`):
    /// two handles conflict even inside one process, so two instances on one folder in the
    /// same process are refused too.
    pub fn try_acquire(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(path).unwrap_or_default();
                let holder = holder.trim();
                return Err(if holder.is_empty() {
                    format!("{} is locked by another instance", path.display())
                } else {
                    format!(
                        "{} is locked by process {holder} (another instance owns this folder)",
                        path.display()
                    )
                });
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
        let _ = file.set_len(0);
        let _ = file.write_all(std::process::id().to_string().as_bytes());
        Ok(Self { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// CRC-32C (Castagnoli), the checksum of the feedback log's records. SSE4.2's `crc32`
/// instruction when the CPU has it (a few GB/s), a table otherwise; same result.
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the feature was detected at run time.
            return unsafe { crc32c_sse42(bytes) };
        }
    }
    crc32c_table(bytes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut crc: u64 = 0xFFFF_FFFF;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
    }
    let mut crc = crc as u32;
    for &b in chunks.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}

fn crc32c_table(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in bytes {
        crc = t[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_matches_the_standard_check_value_both_ways() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_table(b"123456789"), 0xE306_9283);
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        assert_eq!(crc32c(&long), crc32c_table(&long));
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_lock_is_exclusive_even_in_one_process_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("mlops-lock-{}", std::process::id()));
        let p = dir.join(".lock");
        let a = FileLock::try_acquire(&p).unwrap();
        let e = FileLock::try_acquire(&p).err().unwrap();
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(a);
        let b = FileLock::try_acquire(&p);
        assert!(b.is_ok());
        drop(b);
        fs::remove_dir_all(&dir).unwrap();
    }

    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("mlops-fsutil-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let p = dir.join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        assert!(read_text(&dir, 1 << 20).unwrap_err().contains("directory"));
        assert!(read_text(&p, 1).unwrap_err().contains("larger"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
