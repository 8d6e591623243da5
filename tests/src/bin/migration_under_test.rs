//! The `migration` CLI, built here for the process-level tests.

#[tokio::main]
async fn main() {
    sea_orm_migration::cli::run_cli(migration::Migrator).await;
}
