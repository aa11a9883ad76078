//! Environment files: the text `service install` writes for a service, the
//! private or DPAPI-protected bytes it is stored as, and how the worker
//! reads one back with `--env-file`.

use super::{err, ServiceError, ServiceSpec};
use std::fmt::Write as _;
use std::path::Path;

/// First line of an environment file protected with Windows DPAPI.
pub const DPAPI_MAGIC: &[u8] = b"RAYVAULT-DPAPI-1\n";

impl ServiceSpec {
    /// The environment file's text (Linux and Windows); secrets included.
    pub fn env_file_text(&self) -> String {
        let mut s = format!(
            "# Written by `{} service install`: the variables the service starts with.\n\
             # Only its owner may read this file; see docs/operations.md.\n",
            self.program.binary()
        );
        for (k, v) in &self.env {
            let _ = writeln!(s, "{k}='{v}'");
        }
        s
    }
}

/// Refuses a value the environment file could not carry unchanged.
pub(super) fn check_env_value(name: &str, value: &str) -> Result<(), ServiceError> {
    if value.contains(['\'', '\n', '\r', '\0']) {
        return Err(err(format!(
            "{name} contains a quote, a line break or a NUL, which an environment file cannot hold; choose a value without them"
        )));
    }
    Ok(())
}

/// The `RAYVAULT_*` variables of an environment file, in order. Blank
/// lines and `#` comments are skipped; values may be bare, or in single or
/// double quotes; other variables are ignored.
pub fn parse_env_text(text: &str) -> Result<Vec<(String, String)>, ServiceError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(format!("line {} is not NAME=value", n + 1)));
        };
        let key = key.trim();
        if !key.starts_with("RAYVAULT_") {
            continue;
        }
        let value = value.trim();
        let value = ['\'', '"']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Reads an environment file written by `service install`: refuses one
/// that other users can read (Unix) and decrypts a DPAPI-protected one
/// (Windows). Returns its `RAYVAULT_*` variables.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, ServiceError> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read the environment file {shown}: {e}")))?;
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!(
                "the environment file {shown} can be read by other users (mode {:o}); it holds the cluster secret: run `chmod 600 {shown}`",
                meta.mode() & 0o777
            )));
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(err(format!(
                "the environment file {shown} belongs to uid {}, not to this user (uid {me}); it must be this user's own file",
                meta.uid()
            )));
        }
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read the environment file {shown}: {e}")))?;
    let text = match bytes.strip_prefix(DPAPI_MAGIC) {
        Some(blob) => dpapi::unprotect(blob).map_err(|e| err(format!("cannot decrypt the environment file {shown}: {e}")))?,
        None => String::from_utf8(bytes).map_err(|_| err(format!("the environment file {shown} is not UTF-8 text")))?,
    };
    parse_env_text(&text).map_err(|e| err(format!("the environment file {shown}: {e}")))
}

/// Writes `bytes` to `path` so that only the current user can read it:
/// mode 0600 on Unix, set when the file is created, so no other user ever
/// sees it readable. The file is replaced atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The environment file's bytes as written on this platform: plain text on
/// Unix (protected by its mode), DPAPI-protected for the current user on
/// Windows, unless `machine_readable` (the `--headless` service, which runs
/// as LocalSystem and relies on the file's ACL instead).
pub fn env_file_bytes(text: &str, machine_readable: bool) -> Result<Vec<u8>, ServiceError> {
    if cfg!(windows) && !machine_readable {
        let mut out = DPAPI_MAGIC.to_vec();
        out.extend(dpapi::protect(text.as_bytes()).map_err(|e| err(format!("DPAPI could not protect the secret: {e}")))?);
        return Ok(out);
    }
    Ok(text.as_bytes().to_vec())
}

#[cfg(windows)]
mod dpapi {
    //! Windows DPAPI (CryptProtectData) for the current user: only a
    //! process of the same user on the same machine can decrypt.
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Cryptography::{
        CryptProtectData, CryptUnprotectData, CRYPTPROTECT_UI_FORBIDDEN, CRYPT_INTEGER_BLOB,
    };

    fn call(input: &[u8], protect: bool) -> std::io::Result<Vec<u8>> {
        let data_in = CRYPT_INTEGER_BLOB { cbData: input.len() as u32, pbData: input.as_ptr() as *mut u8 };
        let mut data_out = CRYPT_INTEGER_BLOB { cbData: 0, pbData: std::ptr::null_mut() };
        let description: Vec<u16> = "RayVault cluster secret\0".encode_utf16().collect();
        // SAFETY: the blobs point to live buffers of the stated sizes; the
        // output is allocated by the API and freed with LocalFree below.
        let ok = unsafe {
            if protect {
                CryptProtectData(
                    &data_in,
                    description.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    CRYPTPROTECT_UI_FORBIDDEN,
                    &mut data_out,
                )
            } else {
                CryptUnprotectData(
                    &data_in,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    CRYPTPROTECT_UI_FORBIDDEN,
                    &mut data_out,
                )
            }
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: on success pbData points to cbData bytes owned by us.
        let out = unsafe { std::slice::from_raw_parts(data_out.pbData, data_out.cbData as usize).to_vec() };
        // SAFETY: allocated by the API with LocalAlloc.
        unsafe { LocalFree(data_out.pbData as _) };
        Ok(out)
    }

    pub fn protect(plain: &[u8]) -> std::io::Result<Vec<u8>> {
        call(plain, true)
    }

    pub fn unprotect(blob: &[u8]) -> Result<String, String> {
        let plain = call(blob, false).map_err(|e| format!("{e} (only the Windows user who installed the service can read it)"))?;
        String::from_utf8(plain).map_err(|_| "the decrypted file is not UTF-8 text".to_string())
    }
}

#[cfg(not(windows))]
mod dpapi {
    pub fn protect(_plain: &[u8]) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "DPAPI exists on Windows only"))
    }

    pub fn unprotect(_blob: &[u8]) -> Result<String, String> {
        Err("it is protected with Windows DPAPI and can only be read on Windows by the user who wrote it".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_round_trip() {
        let text = "# comment\n\nRAYVAULT_CLUSTER_SECRET='a b=c\"'\nexport RAYVAULT_WORKER_ID=\"w1\"\nPATH=/bin\nRAYVAULT_X=bare\n";
        let vars = parse_env_text(text).unwrap();
        assert_eq!(
            vars,
            vec![
                ("RAYVAULT_CLUSTER_SECRET".to_string(), "a b=c\"".to_string()),
                ("RAYVAULT_WORKER_ID".to_string(), "w1".to_string()),
                ("RAYVAULT_X".to_string(), "bare".to_string()),
            ]
        );
        assert!(parse_env_text("RAYVAULT_X").is_err());
        assert!(check_env_value("K", "it's").is_err());
        assert!(check_env_value("K", "two\nlines").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600_and_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/w.env");
        write_private(&path, b"RAYVAULT_CLUSTER_SECRET='s3'\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_env_file(&path).unwrap(), vec![("RAYVAULT_CLUSTER_SECRET".into(), "s3".into())]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = read_env_file(&path).unwrap_err().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        let dpapi = dir.path().join("d.env");
        write_private(&dpapi, &[DPAPI_MAGIC, b"blob"].concat()).unwrap();
        assert!(read_env_file(&dpapi).unwrap_err().to_string().contains("DPAPI"));
    }
}
