//! `bora models deploy|list`: model services (`type: model`) without
//! writing a `bora.yaml`. `deploy` builds the same `ServiceSpec` a file
//! would and deploys it like `bora deploy` (with the same `--wait`
//! progress); `list` shows each model's replicas and the gateway endpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use bora_api::{InstanceType, List, ModelEngine, ModelSpec, ScalingSpec, ServiceSpec, ServiceType};

use crate::commands::Ctx;
use crate::commands::deploy::{self, DeployArgs};
use crate::error::CliError;
use crate::output::{self, OutputFormat};

/// `bora models …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ModelsCommand {
    /// Deploy a model file as a model service.
    Deploy(ModelDeployArgs),
    /// List model services: state, ready replicas, and the gateway endpoint.
    #[command(visible_alias = "ls")]
    List,
}

/// How a model is served, as `--engine` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// Bora's own engine: a GGUF file, no image.
    Builtin,
    /// A server image speaking the OpenAI API (`--image`).
    OpenaiCompatible,
}

/// `bora models deploy NAME --path FILE …`
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ModelDeployArgs {
    /// The model's name: clients ask for it as `model`, unique across apps.
    pub name: String,
    /// The model file on the node (absolute path).
    #[arg(long, value_name = "FILE")]
    pub path: PathBuf,
    /// Which server runs it.
    #[arg(long, value_enum, default_value_t = EngineArg::Builtin)]
    pub engine: EngineArg,
    /// The server image, for `--engine openai-compatible`.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The app the model service belongs to.
    #[arg(long, default_value = "models", value_name = "APP")]
    pub app: String,
    /// Fewest replicas (0: sleeps when idle, woken by a request).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min: u32,
    /// Most replicas.
    #[arg(long, value_name = "N")]
    pub max: Option<u32>,
    /// Size of each replica: nano, micro, small, medium, large.
    #[arg(long, value_enum, default_value = "small", value_name = "TYPE")]
    pub instance_type: InstanceTypeArg,
    /// Wait until the model is ready (exit 1 if it fails, 2 on timeout).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(
        long,
        default_value = "10m",
        value_name = "DURATION",
        requires = "wait"
    )]
    pub timeout: bora_api::Duration,
}

/// `--instance-type`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InstanceTypeArg {
    Nano,
    Micro,
    Small,
    Medium,
    Large,
}

impl From<InstanceTypeArg> for InstanceType {
    fn from(t: InstanceTypeArg) -> Self {
        match t {
            InstanceTypeArg::Nano => InstanceType::Nano,
            InstanceTypeArg::Micro => InstanceType::Micro,
            InstanceTypeArg::Small => InstanceType::Small,
            InstanceTypeArg::Medium => InstanceType::Medium,
            InstanceTypeArg::Large => InstanceType::Large,
        }
    }
}

impl ModelDeployArgs {
    /// The deployment definition these flags stand for.
    pub fn spec(&self) -> ServiceSpec {
        let engine = match self.engine {
            EngineArg::Builtin => ModelEngine::Builtin,
            EngineArg::OpenaiCompatible => ModelEngine::OpenaiCompatible,
        };
        ServiceSpec {
            name: self.name.clone(),
            kind: ServiceType::Model,
            image: self.image.clone().unwrap_or_default(),
            command: None,
            args: None,
            registry_secret: None,
            env: Default::default(),
            ports: Vec::new(),
            routes: Vec::new(),
            health_check: None,
            instance_type: self.instance_type.into(),
            isolation: Default::default(),
            scaling: ScalingSpec {
                min: self.min,
                max: self.max.unwrap_or(self.min.max(1)),
                ..ScalingSpec::default()
            },
            model: Some(ModelSpec {
                path: self.path.display().to_string(),
                engine,
            }),
        }
    }
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, cmd: ModelsCommand) -> Result<ExitCode, CliError> {
    match cmd {
        ModelsCommand::Deploy(args) => deploy_model(ctx, args).await,
        ModelsCommand::List => {
            let client = ctx.client()?;
            let models = client.list_model_services().await?;
            ctx.print_list(
                &models,
                "no models yet: deploy one with `bora models deploy NAME --path FILE.gguf`",
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn deploy_model(ctx: &mut Ctx<'_>, args: ModelDeployArgs) -> Result<ExitCode, CliError> {
    // Check the flags before looking for a server, with the rules the API
    // applies (a relative path, an image for the built-in engine, …).
    let mut spec = args.spec();
    bora_manifest::normalize_service(&mut spec);
    let violations = bora_manifest::validate_service(&spec);
    if !violations.is_empty() {
        let list: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
        return Err(CliError::InvalidFlags(format!(
            "cannot deploy model {}: {}",
            args.name,
            list.join("; ")
        )));
    }
    let client = ctx.client()?;
    let deployment = client.create_deployment(&args.app, &spec).await?;
    let line = format!(
        "deployment {} of model {} ({}/{}) created (version {})",
        deployment.id, args.name, deployment.app, deployment.service, deployment.version
    );
    match ctx.format() {
        OutputFormat::Table => ctx.print(&format!("{line}\n"))?,
        _ => ctx.note(&line)?,
    }
    let deployments = if args.wait {
        let wait_args = DeployArgs {
            file: PathBuf::new(),
            wait: true,
            timeout: args.timeout,
            poll_interval: bora_api::Duration(std::time::Duration::from_millis(300)),
        };
        deploy::wait(ctx, &client, vec![deployment], &wait_args).await?
    } else {
        vec![deployment]
    };
    if ctx.format() != OutputFormat::Table {
        let text = output::render_data(ctx.format(), &List { items: deployments })?;
        ctx.print(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{ClientArgs, ClientCommand};

    fn parse(args: &[&str]) -> ModelDeployArgs {
        let cli = ClientArgs::try_parse_from(args).unwrap();
        match cli.command {
            ClientCommand::Models(ModelsCommand::Deploy(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_become_a_model_spec() {
        let a = parse(&[
            "bora",
            "models",
            "deploy",
            "smollm2",
            "--path",
            "/srv/m.gguf",
        ]);
        let spec = a.spec();
        assert_eq!(a.app, "models");
        assert_eq!(spec.kind, ServiceType::Model);
        assert_eq!(spec.image, "");
        assert_eq!((spec.scaling.min, spec.scaling.max), (1, 1));
        assert_eq!(
            spec.model,
            Some(ModelSpec {
                path: "/srv/m.gguf".into(),
                engine: ModelEngine::Builtin
            })
        );
        assert!(bora_manifest::validate_service(&spec).is_empty());

        let a = parse(&[
            "bora",
            "models",
            "deploy",
            "qwen",
            "--path",
            "/srv/q.gguf",
            "--engine",
            "openai-compatible",
            "--image",
            "vllm:1",
            "--min",
            "0",
            "--max",
            "4",
            "--app",
            "ai",
            "--instance-type",
            "large",
            "--wait",
        ]);
        let spec = a.spec();
        assert_eq!(spec.image, "vllm:1");
        assert_eq!((spec.scaling.min, spec.scaling.max), (0, 4));
        assert_eq!(spec.instance_type, InstanceType::Large);
        assert_eq!(spec.model.unwrap().engine, ModelEngine::OpenaiCompatible);
        assert!(a.wait);
    }
}
