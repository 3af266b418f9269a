//! Object stores (S3 and S3-compatible servers, Google Cloud Storage, Azure Blob Storage)
//! through the `object_store` crate, for model files and Parquet sinks.
//!
//! A store's settings come from options named as `object_store` names them:
//! `aws_access_key_id`, `aws_secret_access_key`, `aws_region`, `aws_endpoint`,
//! `aws_allow_http`, `google_service_account`, `azure_storage_account_name`, ... An option the
//! store does not know is an error.
//!
//! The server's own environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`, instance metadata) is used
//! only when the server is configured to ([`set_use_environment`], the server's
//! `object_store_credentials = 'environment'`): otherwise a statement naming an endpoint of its
//! choice would make Eddy send the server's keys there. A store given no credentials then
//! sends unsigned requests (public buckets, test servers).
//!
//! Errors shown to users ([`describe`]) never carry the remote server's response body.

use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::multipart::MultipartStore;
use object_store::path::Path;

static USE_ENVIRONMENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether stores also take settings and credentials from the server's environment (set once
/// at start-up from the server's configuration).
pub fn set_use_environment(on: bool) {
    USE_ENVIRONMENT.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn use_environment() -> bool {
    USE_ENVIRONMENT.load(std::sync::atomic::Ordering::Relaxed)
}

/// A store error as users see it: what went wrong and the HTTP status, never the remote
/// response body (which a server of the user's choosing controls, and which may echo
/// request details).
pub fn describe(e: &object_store::Error) -> String {
    use object_store::Error as E;
    match e {
        E::NotFound { path, .. } => format!("object {path} not found"),
        E::PermissionDenied { path, .. } => format!("access to {path} denied"),
        E::Unauthenticated { path, .. } => format!("not authenticated for {path}"),
        E::AlreadyExists { path, .. } => format!("object {path} already exists"),
        other => {
            let text = other.to_string();
            let cut = match text.find("status code: ") {
                // Keep "status code: 500 Internal Server Error", drop the body after it.
                Some(i) => {
                    let rest = &text[i + 13..];
                    let end = rest.find(": ").map_or(rest.len(), |j| j);
                    text[..i + 13 + end].to_string()
                }
                None => text,
            };
            let first_line = cut.lines().next().unwrap_or_default();
            first_line.chars().take(240).collect()
        }
    }
}

/// URL schemes served by an object store.
pub const SCHEMES: [&str; 6] = ["s3", "s3a", "gs", "az", "abfs", "abfss"];

/// The scheme of `location` if it is an object-store URL.
pub fn scheme(location: &str) -> Option<String> {
    let scheme = location.split_once("://")?.0.to_ascii_lowercase();
    SCHEMES.contains(&scheme.as_str()).then_some(scheme)
}

/// The store of an object-store URL and the path inside it. Errors are messages for users.
pub fn open(
    location: &str,
    options: &[(String, String)],
) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    open_store(location, options).map(|s| (s.objects, s.prefix))
}

/// An object store with its multipart interface, and the path inside it.
pub struct Store {
    pub objects: Arc<dyn ObjectStore>,
    pub multipart: Arc<dyn MultipartStore>,
    pub prefix: Path,
}

/// Like [`open`], keeping the multipart interface (large uploads in parts).
pub fn open_store(location: &str, options: &[(String, String)]) -> Result<Store, String> {
    let Some(scheme) = scheme(location) else {
        return Err(format!(
            "{location} is not an object-store URL (s3://, gs://, az://)"
        ));
    };
    let url = url::Url::parse(location).map_err(|e| format!("invalid URL {location}: {e}"))?;
    let unknown = |k: &str| {
        format!(
            "unknown option \"{k}\" for a {scheme}:// location (object-store settings are named like aws_region or aws_endpoint)"
        )
    };
    let invalid = |e: object_store::Error| format!("cannot use {location}: {}", describe(&e));
    let env = use_environment();
    fn both<S: ObjectStore + MultipartStore>(
        s: S,
    ) -> (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) {
        let s = Arc::new(s);
        (s.clone(), s)
    }
    let (objects, multipart) = match scheme.as_str() {
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let mut b = match env {
                true => AmazonS3Builder::from_env(),
                false => AmazonS3Builder::new(),
            }
            .with_url(location);
            for (k, v) in options {
                let key = AmazonS3ConfigKey::from_str(k).map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            if !env
                && b.get_config_value(&AmazonS3ConfigKey::AccessKeyId)
                    .is_none()
            {
                b = b.with_skip_signature(true);
            }
            both(b.build().map_err(invalid)?)
        }
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let mut b = match env {
                true => GoogleCloudStorageBuilder::from_env(),
                false => GoogleCloudStorageBuilder::new(),
            }
            .with_url(location);
            for (k, v) in options {
                let key = GoogleConfigKey::from_str(k).map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            let given = [
                GoogleConfigKey::ServiceAccount,
                GoogleConfigKey::ServiceAccountKey,
            ]
            .iter()
            .any(|k| b.get_config_value(k).is_some());
            if !env && !given {
                b = b.with_skip_signature(true);
            }
            both(b.build().map_err(invalid)?)
        }
        _ => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let mut b = match env {
                true => MicrosoftAzureBuilder::from_env(),
                false => MicrosoftAzureBuilder::new(),
            }
            .with_url(location);
            for (k, v) in options {
                let key = AzureConfigKey::from_str(k).map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            let given = [
                AzureConfigKey::AccessKey,
                AzureConfigKey::SasKey,
                AzureConfigKey::ClientSecret,
                AzureConfigKey::Token,
            ]
            .iter()
            .any(|k| b.get_config_value(k).is_some());
            if !env && !given {
                b = b.with_skip_signature(true);
            }
            both(b.build().map_err(invalid)?)
        }
    };
    let path = Path::from_url_path(url.path().trim_start_matches('/'))
        .map_err(|e| format!("invalid path in {location}: {e}"))?;
    Ok(Store {
        objects,
        multipart,
        prefix: path,
    })
}
