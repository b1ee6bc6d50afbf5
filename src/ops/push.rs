//! Pushing built images to the stack's registry, with credentials from the
//! docker config file (~/.docker/config.json or $DOCKER_CONFIG).

use super::build::Built;
use crate::engine::DockerCredentials;
use crate::error::{Error, Result};
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use base64::Engine as _;

/// Credentials for `registry` (its host part) from the docker config file.
pub fn credentials(registry: &str) -> Option<DockerCredentials> {
    let host = registry.split('/').next().unwrap_or(registry);
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".docker")
        });
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let entry = auths
        .iter()
        .find(|(k, _)| {
            k.trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                == Some(host)
        })?
        .1;
    let auth = entry.get("auth")?.as_str()?;
    let decoded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(auth)
            .ok()?,
    )
    .ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some(DockerCredentials {
        username: Some(user.to_string()),
        password: Some(pass.to_string()),
        serveraddress: Some(host.to_string()),
        ..Default::default()
    })
}

pub async fn push(env: &StackEnv<'_>, images: &[Built], ui: &Ui) -> Result<()> {
    let Some(registry) = env.stack.registry.clone() else {
        return Err(Error::usage(
            "stack.toml names no registry to push to",
            "set registry = \"host:port/path\" in [stack]",
        ));
    };
    let creds = credentials(&registry);
    for b in images {
        ui.info(format!("pushing {}", b.reference));
        env.engine
            .push(&b.reference, creds.clone(), &mut |s| {
                ui.detail(format!("{}: {s}", b.service))
            })
            .await?;
        ui.ok(format!("pushed {}", b.reference));
    }
    Ok(())
}

/// Pull from the stack's registry the images of `services` (application
/// services) that are not on the daemon's host, as CI pushed them for this
/// tag (`build --push`); the services whose image the registry does not
/// have either (each said). No registry: all of them.
pub async fn pull_missing(env: &StackEnv<'_>, services: &[String], ui: &Ui) -> Result<Vec<String>> {
    let Some(registry) = env.stack.registry.clone().filter(|r| !r.is_empty()) else {
        return Ok(services.to_vec());
    };
    let creds = credentials(&registry);
    let tag = crate::runtime::image_tag(env.stack);
    let mut still = Vec::new();
    for s in services {
        let reference = format!("{}:{tag}", env.stack.image_repo(s));
        let t = std::time::Instant::now();
        match env.engine.pull(&reference, creds.clone()).await {
            Ok(()) => ui.ok(format!(
                "pulled {reference} in {:.1} s",
                t.elapsed().as_secs_f64()
            )),
            Err(e) => {
                ui.detail(format!("{s}: not pulled from {registry}: {e}"));
                still.push(s.clone());
            }
        }
    }
    Ok(still)
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_come_from_the_docker_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"https://registry.example.com": {"auth": "YWxpY2U6czNjcjN0"}, "other.example.com": {"auth": "Ym9iOng="}}}"#,
        )
        .unwrap();
        std::env::set_var("DOCKER_CONFIG", dir.path());
        let c = super::credentials("registry.example.com/ai1c").expect("found by host");
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some("s3cr3t"));
        assert_eq!(c.serveraddress.as_deref(), Some("registry.example.com"));
        assert!(super::credentials("127.0.0.1:5000/x").is_none());
        std::env::remove_var("DOCKER_CONFIG");
    }
}
