//! Layered configuration: `config/default.toml` (compiled in, so a binary
//! copied alone to another machine still has every default), an optional
//! local file, `RAYVAULT_*` environment variables, then flags.
//!
//! Architecture Invariant: secrets are never part of [`Settings`]; they come
//! from `RAYVAULT_CLUSTER_SECRET*` through [`crate::auth::Keyring`] only.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod sections;
#[cfg(test)]
mod tests;

pub use sections::{
    choice, AuthMode, ControllerSettings, FrameSettings, NormalizeLufs, OnInterrupted, OpenclawSettings, PostcheckThresholds,
    StepSettings, ToolSettings, TtsEngineChoice, TtsSettings, WorkerSettings, NORMALIZE_LUFS_RANGE,
};

/// The committed defaults, embedded at compile time.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub worker: WorkerSettings,
    pub controller: ControllerSettings,
    pub tools: ToolSettings,
    pub steps: BTreeMap<String, StepSettings>,
    pub tts: TtsSettings,
    pub postcheck: PostcheckThresholds,
    pub frames: FrameSettings,
    pub openclaw: OpenclawSettings,
}

/// A configuration problem, reported with what to change.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Every key path of the defaults (`worker`, `worker.port`, `steps`, ...).
fn known_keys() -> Result<BTreeSet<String>, ConfigError> {
    let tree = toml_tree(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml), "config/default.toml")?;
    let mut keys = BTreeSet::new();
    collect_keys(&tree, "", &mut keys);
    Ok(keys)
}

/// A TOML source as a JSON tree (tables become objects).
fn toml_tree<S: config::Source + Send + Sync + 'static>(source: S, name: &str) -> Result<serde_json::Value, ConfigError> {
    config::Config::builder()
        .add_source(source)
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>())
        .map_err(|e| ConfigError(format!("{name}: {e}")))
}

fn collect_keys(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(table) = v.as_object() {
        for (k, child) in table {
            let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            collect_keys(child, &path, out);
            out.insert(path);
        }
    }
}

/// Whether `path` (lower case, dot-separated) is a setting. `[steps.<name>]`
/// tables may name any known step, with the keys of the other step tables.
fn is_known(path: &str, known: &BTreeSet<String>) -> bool {
    if known.contains(path) {
        return true;
    }
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["steps", step] | ["steps", step, _] if !crate::steps::StepName::ALL.iter().any(|s| s.as_str().eq_ignore_ascii_case(step)) => false,
        ["steps", _] => true,
        ["steps", _, key] => known.iter().any(|k| k.starts_with("steps.") && k.ends_with(&format!(".{key}")) && k.split('.').count() == 3),
        _ => false,
    }
}

/// What to say about an unknown key: the keys its table does have.
fn unknown_key_hint(path: &str, known: &BTreeSet<String>) -> String {
    let (table, _) = path.rsplit_once('.').unwrap_or(("", path));
    if table == "steps" || (table.starts_with("steps.") && table.split('.').count() == 2 && !is_known(table, known)) {
        let steps: Vec<String> = crate::steps::StepName::ALL.iter().map(|s| s.as_str().to_ascii_lowercase()).collect();
        return format!("[steps.<name>] tables are named after steps: {}", steps.join(", "));
    }
    let siblings: Vec<&str> = known
        .iter()
        .filter_map(|k| {
            let (t, leaf) = k.rsplit_once('.').unwrap_or(("", k.as_str()));
            (t == table).then_some(leaf)
        })
        .collect();
    let table = if table.is_empty() { "the top level".to_string() } else { format!("[{table}]") };
    format!("the keys of {table} are: {}", siblings.join(", "))
}

/// Refuses a key in a config file that is not a setting (a typo such as
/// `prot = 8797` must not silently leave the port at its default).
fn check_file_keys(path: &Path, known: &BTreeSet<String>) -> Result<(), ConfigError> {
    let name = path.display().to_string();
    let tree = toml_tree(config::File::from(path).format(config::FileFormat::Toml), &name)?;
    let mut keys = BTreeSet::new();
    collect_keys(&tree, "", &mut keys);
    // The config crate lower-cases keys; so does the check.
    match keys.iter().find(|k| !is_known(&k.to_ascii_lowercase(), known)) {
        Some(k) => Err(ConfigError(format!("unknown key `{k}` in {name}; {}", unknown_key_hint(&k.to_ascii_lowercase(), known)))),
        None => Ok(()),
    }
}

/// Refuses a `RAYVAULT_<SECTION>__<KEY>` variable that names no setting.
fn check_env_key(var: &str, known: &BTreeSet<String>) -> Result<(), ConfigError> {
    let path = var.trim_start_matches("RAYVAULT_").to_ascii_lowercase().replace("__", ".");
    if is_known(&path, known) {
        return Ok(());
    }
    Err(ConfigError(format!(
        "unknown setting in the environment: {var} (key `{path}`); {}; unset it or fix its name",
        unknown_key_hint(&path, known)
    )))
}

impl Settings {
    /// Loads defaults, then `local_file` (or `RAYVAULT_CONFIG`, or
    /// `config/local.toml` if present), then the environment.
    pub fn load(local_file: Option<&Path>) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(local_file, &vars)
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_from(local_file: Option<&Path>, env: &[(String, String)]) -> Result<Settings, ConfigError> {
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut b = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        let local = local_file
            .map(Path::to_path_buf)
            .or_else(|| get("RAYVAULT_CONFIG").map(PathBuf::from));
        let known = known_keys()?;
        match local {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError(format!("config file {} does not exist", p.display())));
                }
                check_file_keys(&p, &known)?;
                b = b.add_source(config::File::from(p).format(config::FileFormat::Toml));
            }
            None => {
                let p = Path::new("config/local.toml");
                if p.exists() {
                    check_file_keys(p, &known)?;
                }
                b = b.add_source(config::File::with_name("config/local.toml").required(false));
            }
        }
        // Nested keys: RAYVAULT_SECTION__KEY. Secrets are filtered out so they
        // never enter the configuration tree.
        let nested: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("RAYVAULT_") && k.contains("__") && !k.contains("SECRET"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for var in nested.keys() {
            check_env_key(var, &known)?;
        }
        b = b.add_source(
            config::Environment::with_prefix("RAYVAULT")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(nested)),
        );
        // The documented variable names (README).
        for (var, key) in [
            ("RAYVAULT_WORKER_ID", "worker.id"),
            ("RAYVAULT_WORKER_HOST", "worker.host"),
            ("RAYVAULT_WORKER_PORT", "worker.port"),
            ("RAYVAULT_STATE_DIR", "state_dir"),
        ] {
            b = b.set_override_option(key, get(var)).map_err(|e| ConfigError(e.to_string()))?;
        }
        if get("RAYVAULT_ALLOW_PLAIN_FALLBACK").as_deref() == Some("1") {
            b = b.set_override("controller.auth_mode", "allow_plain").map_err(|e| ConfigError(e.to_string()))?;
        }
        let cfg = b.build().map_err(|e| ConfigError(e.to_string()))?;
        let mut s: Settings = cfg.try_deserialize().map_err(|e| ConfigError(e.to_string()))?;
        // Environment keys arrive lower-case, so step tables are keyed in
        // lower case everywhere (`[steps.ffmpeg_probe]`).
        s.steps = s.steps.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, st) in &self.steps {
            if st.concurrency == 0 {
                return Err(ConfigError(format!("steps.{name}.concurrency must be at least 1")));
            }
        }
        Ok(())
    }

    /// Settings of one step, falling back to a conservative default.
    pub fn step(&self, step_name: &str) -> StepSettings {
        self.steps
            .get(&step_name.to_ascii_lowercase())
            .cloned()
            .unwrap_or(StepSettings { concurrency: 1, timeout_s: 600 })
    }

    /// `$state_dir/worker`.
    pub fn worker_dir(&self) -> PathBuf {
        self.state_dir.join("worker")
    }

    /// `$state_dir/cluster`.
    pub fn cluster_dir(&self) -> PathBuf {
        self.state_dir.join("cluster")
    }
}
