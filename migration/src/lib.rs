//! The provisioning schema, one file per migration, applied in order by [`Migrator`].
//!
//! The first migration is the product's database design exactly as specified; anything the service
//! needs beyond it lives in later migrations so the design stays recognisable.
//!
//! Each migration's SQL is a file under `src/sql/` (`<name>.sql` up, `<name>_down.sql` down),
//! included at compile time: the schema is read and reviewed as SQL, not as Rust strings.

pub use sea_orm_migration::prelude::*;

/// A migration written as SQL: `up` runs the module's `UP`, `down` its `DOWN` (each the text of
/// its `.sql` file).
macro_rules! sql_migration {
    () => {
        #[derive(DeriveMigrationName)]
        pub struct Migration;

        #[async_trait::async_trait]
        impl MigrationTrait for Migration {
            async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                manager.get_connection().execute_unprepared(UP).await?;
                Ok(())
            }

            async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                manager.get_connection().execute_unprepared(DOWN).await?;
                Ok(())
            }
        }
    };
}

mod m20261128_000001_create_users_and_workspaces;
mod m20261128_000002_add_users_clerk_updated_at;
mod m20261128_000003_create_user_tombstones;
mod m20261129_000004_create_provision_user_function;
mod m20261201_000005_account_churn;
mod m20261201_000006_create_provision_user_v2;
mod m20261202_000007_create_provision_user_v3;
mod m20261203_000008_create_reconcile_runs;
mod m20261204_000009_create_dead_letters;

/// Every migration of the schema, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_users_and_workspaces::Migration),
            Box::new(m20261128_000002_add_users_clerk_updated_at::Migration),
            Box::new(m20261128_000003_create_user_tombstones::Migration),
            Box::new(m20261129_000004_create_provision_user_function::Migration),
            Box::new(m20261201_000005_account_churn::Migration),
            Box::new(m20261201_000006_create_provision_user_v2::Migration),
            Box::new(m20261202_000007_create_provision_user_v3::Migration),
            Box::new(m20261203_000008_create_reconcile_runs::Migration),
            Box::new(m20261204_000009_create_dead_letters::Migration),
        ]
    }
}
