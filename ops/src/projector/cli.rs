//! `flashsale migrate` and `flashsale projector`.

use super::{run_projector, ProjectorConfig};
use crate::cli::MigrateArgs;
use crate::config::ProjectorCmdConfig;
use flashsale_runtime::pg::{connect_checked, migrate, Retry, Wait, MIGRATIONS};
use std::future::Future;

/// `flashsale migrate --postgres URL [--json]`: applies what is pending, says what it did.
pub async fn migrate_command(args: MigrateArgs) -> anyhow::Result<()> {
    let pool = connect_checked(&args.pg.postgres, args.pg.pg_pool_size, Wait::No).await?;
    let applied = migrate(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    if args.json {
        let list: Vec<_> = applied
            .iter()
            .map(|m| serde_json::json!({"version": m.version, "name": m.name}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"applied": list, "schemaVersion": latest})
        );
    } else if applied.is_empty() {
        println!("schema is up to date (version {latest}); nothing to apply");
    } else {
        println!("{:<8} {:<24} status", "version", "name");
        for m in &applied {
            println!("{:<8} {:<24} applied", format!("{:04}", m.version), m.name);
        }
        println!("schema is now at version {latest}");
    }
    Ok(())
}

/// `flashsale projector --kafka B --postgres URL`: migrates (waiting for Postgres if it
/// is not up yet), then follows the events topic until `shutdown`.
pub async fn projector_command(
    args: ProjectorCmdConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    args.validate()?;
    if let Ok((_, target)) = flashsale_runtime::pg::parse_url(&args.postgres) {
        tracing::info!(
            "projector, Kafka mode; events from {}events at {}, orders into {target}",
            args.topic_prefix,
            args.kafka
        );
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let pool = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        p = connect_checked(&args.postgres, args.pg_pool_size, Wait::Forever) => p?,
    };
    tokio::select! {
        _ = &mut shutdown => return Ok(()),
        r = Retry::FOREVER.run("migrate", || migrate(&pool)) => { r.map_err(|e| anyhow::anyhow!("migration failed: {e}"))?; }
    }
    let mut config = ProjectorConfig::new(args.kafka, format!("{}events", args.topic_prefix));
    config.max_batch = args.projector_batch.max(1);
    config.commands_topic = Some(format!("{}commands", args.topic_prefix));
    config.adopt_new_topics = args.adopt_new_topics;
    let metrics = std::sync::Arc::new(flashsale_runtime::metrics::Metrics::new());
    let server = match args.metrics_listen {
        Some(addr) => {
            Some(flashsale_runtime::telemetry::serve_metrics(addr, metrics.clone()).await?)
        }
        None => None,
    };
    config.metrics = Some(metrics);
    let result = run_projector(config, pool, shutdown).await;
    if let Some(s) = server {
        s.abort();
    }
    result
}
