//! `worker user show`: one user and their workspace, for a human or (`--json`) a script.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::DatabaseSettings;
use crate::db;
use crate::users::{self, Found, UserKey, UserView};

/// Exit status of `worker user show` when no such user exists (sysexits EX_NOUSER).
pub const EXIT_NO_USER: u8 = 67;

/// The `worker user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Show a user with their workspace; a deleted user (by id only) shows the deletion time.
    /// Exit status 67 when not found.
    Show(ShowArgs),
}

/// Which user to show, and how.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("key").required(true).args(["user_id", "email", "username"])))]
pub struct ShowArgs {
    /// The Clerk user id (`user_...`).
    pub user_id: Option<String>,
    /// Look the user up by email instead.
    #[arg(long)]
    pub email: Option<String>,
    /// Look the user up by username instead.
    #[arg(long)]
    pub username: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `worker user` subcommand.
pub(super) async fn run(
    database: &DatabaseSettings,
    command: UserCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        UserCommand::Show(args) => show(database, args).await,
    }
}

async fn show(database: &DatabaseSettings, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let key = key_of(&args);
    let db = db::connect(database)
        .await
        .with_context(|| format!("connecting to {}", database.redacted_url()))?;
    let found = users::find(&db, &key).await.context("reading the user")?;
    let Some(found) = found else {
        eprintln!("no user with {}", describe(&key));
        return Ok(ExitCode::from(EXIT_NO_USER));
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        print!("{}", human(&found));
    }
    Ok(ExitCode::SUCCESS)
}

fn key_of(args: &ShowArgs) -> UserKey {
    match (&args.user_id, &args.email, &args.username) {
        (Some(id), _, _) => UserKey::Id(id.clone()),
        (None, Some(email), _) => UserKey::Email(email.clone()),
        (None, None, Some(name)) => UserKey::Username(name.clone()),
        // clap's required group makes this unreachable; an empty id finds nobody anyway.
        (None, None, None) => UserKey::Id(String::new()),
    }
}

fn describe(key: &UserKey) -> String {
    match key {
        UserKey::Id(id) => format!("id {id}"),
        UserKey::Email(email) => format!("email {email}"),
        UserKey::Username(name) => format!("username {name}"),
    }
}

pub(super) fn human(found: &Found) -> String {
    match found {
        Found::Live(user) => human_user(user),
        Found::Deleted { id, deleted_at } => {
            format!(
                "id:               {id}\nstatus:           deleted\ndeleted_at:       {deleted_at}\n"
            )
        }
    }
}

fn human_user(user: &UserView) -> String {
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let mut text = format!(
        "id:               {}\nstatus:           live\nemail:            {}\nusername:         {}\n\
         first_name:       {}\nlast_name:        {}\navatar_url:       {}\n\
         subscription:     {}\nstorage:          {} of {} bytes\ncreated_at:       {}\n\
         updated_at:       {}\nclerk_updated_at: {}\n",
        user.id,
        user.email,
        user.username,
        or_none(&user.first_name),
        or_none(&user.last_name),
        or_none(&user.avatar_url),
        user.subscription_tier,
        user.storage_used,
        user.storage_limit,
        user.created_at,
        user.updated_at,
        user.clerk_updated_at,
    );
    match &user.workspace {
        Some(w) => text.push_str(&format!(
            "workspace:        {} \"{}\" (created {})\n",
            w.id, w.name, w.created_at
        )),
        None => text.push_str("workspace:        none\n"),
    }
    text
}
