//! `msaas models`: what is installed, and the stems each model gives.

use std::path::Path;
use std::process::ExitCode;

use pipeline::config::Config;

pub fn list(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    config.validate()?;
    let dir = config.models_dir();
    let names = separate::installed_models(&dir);
    if names.is_empty() {
        eprintln!(
            "no models installed in {}; run tools/setup to install the default ({})",
            dir.display(),
            config.models.default_model
        );
        return Ok(ExitCode::from(1));
    }
    let mut broken = false;
    for name in names {
        let default = if name == config.models.default_model {
            " (default)"
        } else {
            ""
        };
        match separate::Manifest::load(&dir.join(&name).join("manifest.toml")) {
            Ok(manifest) => println!(
                "{name}{default}\t{:?}\t{}",
                manifest.family,
                manifest.sources.join(",")
            ),
            Err(err) => {
                broken = true;
                eprintln!("error: model {name}: {err}");
            }
        }
    }
    Ok(if broken {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
