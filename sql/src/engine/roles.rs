//! Roles: `CREATE ROLE` / `CREATE USER`, `ALTER ROLE` / `ALTER USER` (options, password,
//! rename), `DROP ROLE` / `DROP USER`, and the bootstrap administrator.
//!
//! As in PostgreSQL, only superusers and roles with CREATEROLE manage roles, and only
//! superusers manage superusers. Passwords are stored as SCRAM-SHA-256 verifiers (plus the
//! MD5 hash when MD5 authentication is enabled); a password given already hashed
//! (`SCRAM-SHA-256$…` or `md5…`) is stored as given.

use std::sync::atomic::Ordering;

use datafusion::sql::sqlparser::ast::{
    self, AlterRoleOperation, CreateRole, Expr, Ident, ObjectName, Password, RoleOption, Value,
};

use super::ddl::{ident, name_parts};
use super::session::{CommandTag, Session};
use crate::auth::{ScramSecret, md5_secret};
use crate::catalog::RoleDef;
use crate::error::{Error, Result, sqlstate};

const INSUFFICIENT_PRIVILEGE: &str = "42501";
const DUPLICATE_OBJECT: &str = "42710";

fn role_name(name: &ObjectName) -> String {
    name_parts(name).pop().unwrap_or_default()
}

/// Whether the session may create, alter or drop `target` (None: a new non-superuser).
fn check_privilege(session: &Session, touches_superuser: bool) -> Result<()> {
    if session.info().superuser.load(Ordering::Relaxed) {
        return Ok(());
    }
    let me = session.view().catalog().role(&session.info().user);
    let may = me.is_some_and(|r| r.create_role) && !touches_superuser;
    if may {
        return Ok(());
    }
    Err(Error::user(
        INSUFFICIENT_PRIVILEGE,
        match touches_superuser {
            true => "permission denied: only superusers can create, alter or drop superusers",
            false => "permission denied to manage roles: CREATEROLE is required",
        },
    ))
}

fn text_value(e: &Expr) -> Result<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Ok(s.clone()),
            Value::Number(n, _) => Ok(n.clone()),
            _ => Err(Error::user(
                sqlstate::SYNTAX_ERROR,
                format!("expected a string, got {e}"),
            )),
        },
        _ => Err(Error::user(
            sqlstate::SYNTAX_ERROR,
            format!("expected a string, got {e}"),
        )),
    }
}

fn set_password(session: &Session, role: &mut RoleDef, password: &Password) -> Result<()> {
    let text = match password {
        Password::NullPassword => {
            role.scram = None;
            role.md5 = None;
            return Ok(());
        }
        Password::Password(e) => text_value(e)?,
    };
    if text.is_empty() {
        return Err(Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            "empty password: use PASSWORD NULL to remove a password",
        ));
    }
    if let Some(secret) = ScramSecret::parse_pg_text(&text) {
        if !secret.iterations_allowed() {
            return Err(Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "SCRAM verifier iteration count {} is out of range (1 to {})",
                    secret.iterations,
                    crate::auth::MAX_SCRAM_ITERATIONS
                ),
            ));
        }
        role.scram = Some(secret);
        role.md5 = None;
    } else if text.len() == 35
        && text.starts_with("md5")
        && text[3..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        role.scram = None;
        role.md5 = Some(text);
    } else {
        role.scram = Some(ScramSecret::new(&text));
        role.md5 = session
            .engine()
            .md5_passwords
            .load(Ordering::Relaxed)
            .then(|| md5_secret(&role.name, &text));
    }
    Ok(())
}

fn apply_option(session: &Session, role: &mut RoleDef, option: &RoleOption) -> Result<()> {
    match option {
        RoleOption::BypassRLS(b) => role.bypass_rls = *b,
        RoleOption::ConnectionLimit(e) => {
            role.connection_limit = text_value(e)?.parse().map_err(|_| {
                Error::user(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "invalid connection limit",
                )
            })?
        }
        RoleOption::CreateDB(b) => role.create_db = *b,
        RoleOption::CreateRole(b) => role.create_role = *b,
        RoleOption::Inherit(b) => role.inherit = *b,
        RoleOption::Login(b) => role.login = *b,
        RoleOption::Password(p) => set_password(session, role, p)?,
        RoleOption::Replication(b) => role.replication = *b,
        RoleOption::SuperUser(b) => role.superuser = *b,
        RoleOption::ValidUntil(_) => return Err(Error::not_supported("VALID UNTIL")),
    }
    Ok(())
}

fn push(
    session: &Session,
    ops: impl FnOnce(&mut crate::catalog::Catalog) -> Result<Vec<crate::storage::WriteOp>>,
) -> Result<()> {
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let ops = ops(txn.catalog_mut(&current))?;
    txn.push_ops(ops);
    Ok(())
}

pub fn create_role(session: &Session, r: &CreateRole) -> Result<CommandTag> {
    check_privilege(session, r.superuser == Some(true))?;
    let members = [&r.in_role, &r.in_group, &r.role, &r.user, &r.admin];
    if members.iter().any(|m| !m.is_empty()) {
        return Err(Error::not_supported(
            "role membership (IN ROLE, ROLE, ADMIN)",
        ));
    }
    for name in &r.names {
        let name = role_name(name);
        if session.view().catalog().role(&name).is_some() {
            if r.if_not_exists {
                continue;
            }
            return Err(Error::user(
                DUPLICATE_OBJECT,
                format!("role \"{name}\" already exists"),
            ));
        }
        let mut role = RoleDef::new(&name);
        let flags = [
            (r.login, &mut role.login),
            (r.superuser, &mut role.superuser),
            (r.create_db, &mut role.create_db),
            (r.create_role, &mut role.create_role),
            (r.inherit, &mut role.inherit),
            (r.replication, &mut role.replication),
            (r.bypassrls, &mut role.bypass_rls),
        ];
        for (given, field) in flags {
            if let Some(b) = given {
                *field = b;
            }
        }
        if let Some(limit) = &r.connection_limit {
            apply_option(
                session,
                &mut role,
                &RoleOption::ConnectionLimit(limit.clone()),
            )?;
        }
        if r.valid_until.is_some() {
            return Err(Error::not_supported("VALID UNTIL"));
        }
        if let Some(p) = &r.password {
            set_password(session, &mut role, p)?;
        }
        push(session, |c| c.put_role(role))?;
    }
    Ok(CommandTag::new("CREATE ROLE"))
}

pub fn alter_role(session: &Session, name: &Ident, op: &AlterRoleOperation) -> Result<CommandTag> {
    let name = ident(name);
    let catalog = session.view().catalog();
    let Some(existing) = catalog.role(&name) else {
        return Err(Error::user(
            sqlstate::UNDEFINED_OBJECT,
            format!("role \"{name}\" does not exist"),
        ));
    };
    let mut role = existing.as_ref().clone();
    match op {
        AlterRoleOperation::WithOptions { options } => {
            let touches_superuser = role.superuser
                || options
                    .iter()
                    .any(|o| matches!(o, RoleOption::SuperUser(true)));
            // Anyone may change their own password, as in PostgreSQL.
            let own_password = name == session.info().user
                && options.iter().all(|o| matches!(o, RoleOption::Password(_)));
            if !own_password {
                check_privilege(session, touches_superuser)?;
            }
            for o in options {
                apply_option(session, &mut role, o)?;
            }
            if role.bootstrap && !role.superuser {
                return Err(Error::user(
                    INSUFFICIENT_PRIVILEGE,
                    format!("the bootstrap superuser \"{name}\" stays a superuser"),
                ));
            }
            push(session, |c| c.put_role(role))?;
        }
        AlterRoleOperation::RenameRole { role_name: to } => {
            check_privilege(session, role.superuser)?;
            let to = ident(to);
            if catalog.role(&to).is_some() {
                return Err(Error::user(
                    DUPLICATE_OBJECT,
                    format!("role \"{to}\" already exists"),
                ));
            }
            if name == session.info().user {
                return Err(Error::user("0A000", "the session user cannot be renamed"));
            }
            role.name = to;
            // The MD5 hash is salted with the name (PostgreSQL clears it too).
            role.md5 = None;
            push(session, |c| {
                let mut ops = c.drop_role(&name)?;
                ops.extend(c.put_role(role)?);
                Ok(ops)
            })?;
        }
        _ => return Err(Error::not_supported(format!("ALTER ROLE {op}"))),
    }
    Ok(CommandTag::new("ALTER ROLE"))
}

pub fn drop_roles(session: &Session, names: &[ObjectName], if_exists: bool) -> Result<CommandTag> {
    for name in names {
        let name = role_name(name);
        let Some(role) = session.view().catalog().role(&name) else {
            if if_exists {
                continue;
            }
            return Err(Error::user(
                sqlstate::UNDEFINED_OBJECT,
                format!("role \"{name}\" does not exist"),
            ));
        };
        check_privilege(session, role.superuser)?;
        if role.bootstrap {
            return Err(Error::user(
                "2BP01",
                format!("cannot drop role {name} because it is required by the database system"),
            ));
        }
        if name == session.info().user {
            return Err(Error::user("55006", "current user cannot be dropped"));
        }
        push(session, |c| c.drop_role(&name))?;
    }
    Ok(CommandTag::new("DROP ROLE"))
}

/// Creates the bootstrap superuser, or gives it the password when it has none, in one
/// committed transaction. An existing password is kept: change it with ALTER ROLE.
pub async fn bootstrap_admin(session: &Session, name: &str, password: Option<&str>) -> Result<()> {
    let existing = session.view().catalog().role(name);
    if existing
        .as_ref()
        .is_some_and(|r| r.bootstrap && (r.scram.is_some() || password.is_none()))
    {
        return Ok(());
    }
    let mut role = existing
        .map(|r| r.as_ref().clone())
        .unwrap_or_else(|| RoleDef::new(name));
    role.bootstrap = true;
    role.superuser = true;
    role.login = true;
    role.create_db = true;
    role.create_role = true;
    role.replication = true;
    role.bypass_rls = true;
    if let Some(p) = password
        && role.scram.is_none()
    {
        let literal = Expr::Value(Value::SingleQuotedString(p.to_string()).into());
        set_password(session, &mut role, &Password::Password(literal))?;
    }
    session.begin_implicit();
    let pushed = push(session, |c| {
        // Only one bootstrap superuser.
        let mut ops = Vec::new();
        let others: Vec<RoleDef> = c
            .roles()
            .filter(|r| r.bootstrap && r.name != name)
            .map(|r| RoleDef {
                bootstrap: false,
                ..r.as_ref().clone()
            })
            .collect();
        for r in others {
            ops.extend(c.put_role(r)?);
        }
        ops.extend(c.put_role(role)?);
        Ok(ops)
    });
    session.end_implicit(pushed.is_ok()).await?;
    pushed
}

/// `DROP USER` parses as dropping users; they are roles.
pub fn is_role_object(t: ast::ObjectType) -> bool {
    matches!(t, ast::ObjectType::Role | ast::ObjectType::User)
}
