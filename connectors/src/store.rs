//! Object stores (S3 and S3-compatible servers, Google Cloud Storage, Azure Blob Storage)
//! through the `object_store` crate, for model files and Parquet sinks.
//!
//! A store's settings come from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and from
//! options named as `object_store` names them: `aws_access_key_id`, `aws_secret_access_key`,
//! `aws_region`, `aws_endpoint`, `aws_allow_http`, `google_service_account`,
//! `azure_storage_account_name`, ... An option the store does not know is an error.

use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::multipart::MultipartStore;
use object_store::path::Path;

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
    let invalid = |e: object_store::Error| format!("cannot use {location}: {e}");
    fn both<S: ObjectStore + MultipartStore>(
        s: S,
    ) -> (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) {
        let s = Arc::new(s);
        (s.clone(), s)
    }
    let (objects, multipart) = match scheme.as_str() {
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let mut b = AmazonS3Builder::from_env().with_url(location);
            for (k, v) in options {
                let key = AmazonS3ConfigKey::from_str(k).map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            both(b.build().map_err(invalid)?)
        }
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let mut b = GoogleCloudStorageBuilder::from_env().with_url(location);
            for (k, v) in options {
                let key = GoogleConfigKey::from_str(k).map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            both(b.build().map_err(invalid)?)
        }
        _ => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let mut b = MicrosoftAzureBuilder::from_env().with_url(location);
            for (k, v) in options {
                let key = AzureConfigKey::from_str(k).map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
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
