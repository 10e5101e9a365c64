//! The tenant's GitOps manifests on disk (`<gitops>/tenants/<tenant>/`), which Flux applies.
//! Each file is written atomically (a temporary file in the same directory, then a rename) and
//! only when its content changed, so a reconciler never reads half a file and an unchanged
//! tenant makes no commits.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::json;

use super::kubernetes::{self, FILES};
use super::{Step, StepContext, StepError, Systems, failure};

pub struct Manifests;

/// The `manifests` step.
pub fn manifests() -> Box<dyn Step> {
    Box::new(Manifests)
}

/// The file's content, or `None` when it does not exist.
async fn read(path: &Path) -> Result<Option<String>, StepError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failure::io(&format!("reading {}", path.display()), e)),
    }
}

/// Writes `content` to `dir/name` unless it is already there; returns whether it wrote.
async fn write_if_changed(dir: &Path, name: &str, content: &str) -> Result<bool, StepError> {
    let path = dir.join(name);
    if read(&path).await?.as_deref() == Some(content) {
        return Ok(false);
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, content.as_bytes()).await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(failure::io(&format!("writing {}", path.display()), e));
    }
    Ok(true)
}

/// Makes the renames durable: they live in the directory's entries.
async fn sync_dir(dir: &Path) -> Result<(), StepError> {
    let synced = async { tokio::fs::File::open(dir).await?.sync_all().await }.await;
    synced.map_err(|e| failure::io(&format!("syncing {}", dir.display()), e))
}

/// The regular files in `dir`, sorted; empty when `dir` does not exist.
async fn files_in(dir: &Path) -> Result<Vec<PathBuf>, StepError> {
    let context = || format!("listing {}", dir.display());
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(failure::io(&context(), e)),
    };
    let mut files = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| failure::io(&context(), e))?
    {
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

#[async_trait]
impl Step for Manifests {
    fn name(&self) -> &'static str {
        "manifests"
    }

    async fn apply(&self, _sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        let rendered = kubernetes::render(ctx)?;
        let dir = &ctx.names.manifest_dir;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| failure::io(&format!("creating {}", dir.display()), e))?;
        let mut written = Vec::new();
        for (name, content) in &rendered {
            if write_if_changed(dir, name, content).await? {
                written.push(*name);
            }
        }
        if !written.is_empty() {
            sync_dir(dir).await?;
        }
        Ok(json!({ "dir": dir, "written": written, "files": FILES }))
    }

    async fn compensate(&self, _sys: &Systems, ctx: &StepContext) -> Result<Vec<String>, StepError> {
        let dir = &ctx.names.manifest_dir;
        let files = files_in(dir).await?;
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(failure::io(&format!("removing {}", dir.display()), e)),
        }
        if let Some(parent) = dir.parent() {
            sync_dir(parent).await?;
        }
        let mut removed: Vec<String> = files.iter().map(|f| format!("file {}", f.display())).collect();
        removed.push(format!("dir {}", dir.display()));
        Ok(removed)
    }

    async fn check(&self, _sys: &Systems, ctx: &StepContext) -> Result<bool, StepError> {
        for (name, content) in kubernetes::render(ctx)? {
            let Some(on_disk) = read(&ctx.names.manifest_dir.join(name)).await? else {
                return Ok(false);
            };
            let parses = serde_norway::from_str::<serde_json::Value>(&on_disk).is_ok();
            if !parses || on_disk != content {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
