//! Staff accounts, API tokens and console sessions.
//!
//! API tokens and session ids are random 256-bit secrets: only their SHA-256 digest is stored,
//! and a lookup by digest is a constant-time comparison in effect. Passwords (chosen by people)
//! are hashed with Argon2id.

use crate::crypto::{new_secret, sha256};
use crate::{App, AppError, AuthMethod, Principal, RequestContext, now_ms};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use switchboard_domain::accounts::{Username, check_password, parse_label};
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::ids::{SessionId, TokenId, UserId};
use switchboard_domain::{Role, ValidationErrors};
use switchboard_store::{SessionRow, TokenRow, UserRow};

pub const TOKEN_PREFIX: &str = "sbt";
pub const SESSION_PREFIX: &str = "sbs";
/// How stale `last_used_at` may get before a request refreshes it (avoids a write per request).
const TOUCH_EVERY_MS: i64 = 60_000;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub disabled: bool,
    pub has_password: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = AppError;
    fn try_from(r: UserRow) -> Result<Self, AppError> {
        Ok(Self {
            role: r
                .role
                .parse()
                .map_err(|e| AppError::Internal(format!("user {}: {e}", r.id)))?,
            has_password: r.password_hash.is_some(),
            id: r.id,
            username: r.username,
            display_name: r.display_name,
            disabled: r.disabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub user_id: String,
    pub name: String,
    /// The first characters of the secret, to recognise it (`sbt_AbCd…`).
    pub prefix: String,
    /// Narrower role than the user's, if set.
    pub role: Option<Role>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl TryFrom<TokenRow> for ApiToken {
    type Error = AppError;
    fn try_from(r: TokenRow) -> Result<Self, AppError> {
        Ok(Self {
            role: r
                .role
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| AppError::Internal(format!("token {}: {e}", r.id)))?,
            id: r.id,
            user_id: r.user_id,
            name: r.name,
            prefix: r.prefix,
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        })
    }
}

/// A token with its secret, returned once at creation.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: ApiToken,
    /// The secret. Shown once; only its digest is stored.
    pub secret: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewUser {
    pub username: String,
    pub display_name: Option<String>,
    pub role: String,
    pub password: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserChange {
    pub display_name: Option<String>,
    pub role: Option<String>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewToken {
    pub name: String,
    /// Defaults to the principal themself; admins may create tokens for others.
    pub user_id: Option<String>,
    pub role: Option<String>,
    /// Lifetime in days; none = until revoked.
    pub expires_in_days: Option<u32>,
}

/// A console session with its cookie value, returned once at sign-in.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub cookie: String,
    pub csrf: String,
    pub expires_at: i64,
    pub principal: Principal,
}

pub(crate) fn hash_password(password: &str) -> Result<String, AppError> {
    let salt = SaltString::encode_b64(&crate::crypto::random_bytes::<16>())
        .map_err(|e| AppError::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AppError::Internal(format!("password hashing: {e}")))
}

pub(crate) fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A fixed hash to verify against when the user does not exist, so timing does not tell.
pub(crate) fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("no such user, constant work").unwrap_or_default())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(format!("worker thread: {e}")))
}

fn effective_role(user: &UserRow, token_role: Option<&str>) -> Result<Role, AppError> {
    let user_role: Role = user
        .role
        .parse()
        .map_err(|e| AppError::Internal(format!("{e}")))?;
    let Some(token_role) = token_role else {
        return Ok(user_role);
    };
    let token_role: Role = token_role
        .parse()
        .map_err(|e| AppError::Internal(format!("{e}")))?;
    // A token never grants more than its user has now: if the user's role changed since the
    // token was made, the narrower of the two applies, and unrelated roles grant nothing.
    if user_role.covers(token_role) {
        Ok(token_role)
    } else if token_role.covers(user_role) {
        Ok(user_role)
    } else {
        Err(AppError::Unauthenticated(
            "token role no longer fits its user's role",
        ))
    }
}

impl App {
    pub async fn create_user(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
        input: NewUser,
    ) -> Result<User, AppError> {
        let mut errors = ValidationErrors::new();
        let username = errors.check("username", Username::parse(&input.username));
        let role = errors.check("role", input.role.parse::<Role>());
        let display_name = match input.display_name.as_deref() {
            Some(d) => errors.check("display_name", parse_label(d)),
            None => username.as_ref().map(ToString::to_string),
        };
        if let Some(p) = &input.password {
            errors.check("password", check_password(p));
        }
        errors.into_result()?;
        let (Some(username), Some(role), Some(display_name)) = (username, role, display_name)
        else {
            return Err(AppError::Internal("validated fields missing".to_owned()));
        };
        let password_hash = match input.password {
            Some(p) => Some(blocking(move || hash_password(&p)).await??),
            None => None,
        };
        let now = now_ms();
        let row = UserRow {
            id: UserId::new().to_string(),
            username: username.to_string(),
            display_name,
            role: role.as_str().to_owned(),
            password_hash,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.store().begin().await?;
        if tx.get_user_by_username(&row.username).await?.is_some() {
            return Err(AppError::Conflict(format!(
                "a user named `{}` already exists",
                row.username
            )));
        }
        tx.insert_user(&row).await?;
        let ev = AuditEvent::new("", "user.created", format!("user:{}", row.id))
            .with_details(serde_json::json!({"username": row.username, "role": row.role}));
        self.audit(&mut *tx, principal, ctx, ev).await?;
        tx.commit().await?;
        User::try_from(row)
    }

    pub async fn list_users(&self) -> Result<Vec<User>, AppError> {
        let mut tx = self.store().read().await?;
        tx.list_users()
            .await?
            .into_iter()
            .map(User::try_from)
            .collect()
    }

    pub async fn get_user(&self, id: &str) -> Result<User, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_user(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("user {id}")))
            .and_then(User::try_from)
    }

    /// Changes a user's name, role or disabled flag. Disabling revokes their tokens and
    /// sessions. The last enabled admin can be neither demoted nor disabled.
    pub async fn update_user(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
        id: &str,
        change: UserChange,
    ) -> Result<User, AppError> {
        let mut errors = ValidationErrors::new();
        let display_name = change
            .display_name
            .as_deref()
            .and_then(|d| errors.check("display_name", parse_label(d)));
        let role = change
            .role
            .as_deref()
            .and_then(|r| errors.check("role", r.parse::<Role>()));
        errors.into_result()?;
        let mut tx = self.store().begin().await?;
        let mut row = tx
            .get_user(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("user {id}")))?;
        let was_admin = row.role == "admin" && !row.disabled;
        if let Some(d) = display_name {
            row.display_name = d;
        }
        if let Some(r) = role {
            row.role = r.as_str().to_owned();
        }
        let disabling = change.disabled == Some(true) && !row.disabled;
        if let Some(d) = change.disabled {
            row.disabled = d;
        }
        let still_admin = row.role == "admin" && !row.disabled;
        if was_admin && !still_admin && tx.count_admins().await? <= 1 {
            return Err(AppError::Conflict(
                "this is the last enabled admin; create another admin first".to_owned(),
            ));
        }
        let now = now_ms();
        row.updated_at = now;
        tx.update_user(&row).await?;
        if disabling {
            tx.revoke_tokens_of_user(id, now).await?;
            tx.revoke_sessions_of_user(id, now).await?;
        }
        let ev = AuditEvent::new("", "user.updated", format!("user:{id}"))
            .with_details(serde_json::json!({"role": row.role, "disabled": row.disabled, "display_name_changed": change.display_name.is_some()}));
        self.audit(&mut *tx, principal, ctx, ev).await?;
        tx.commit().await?;
        // Its tokens may now be revoked or carry another role.
        self.inner.api_tokens.clear();
        User::try_from(row)
    }

    pub async fn set_password(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
        id: &str,
        password: String,
    ) -> Result<(), AppError> {
        check_password(&password)
            .map_err(|e| ValidationErrors::single("password", e.to_string()))?;
        let hash = blocking(move || hash_password(&password)).await??;
        let mut tx = self.store().begin().await?;
        let mut row = tx
            .get_user(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("user {id}")))?;
        let now = now_ms();
        row.password_hash = Some(hash);
        row.updated_at = now;
        tx.update_user(&row).await?;
        // Other console sessions of this user end with a password change.
        tx.revoke_sessions_of_user(id, now).await?;
        self.audit(
            &mut *tx,
            principal,
            ctx,
            AuditEvent::new("", "user.password_set", format!("user:{id}")),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_token(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
        input: NewToken,
    ) -> Result<CreatedToken, AppError> {
        let mut errors = ValidationErrors::new();
        let name = errors.check("name", parse_label(&input.name));
        let role = input
            .role
            .as_deref()
            .and_then(|r| errors.check("role", r.parse::<Role>()));
        if input.expires_in_days == Some(0) || input.expires_in_days.is_some_and(|d| d > 3650) {
            errors.add("expires_in_days", "must be between 1 and 3650");
        }
        errors.into_result()?;
        let name = name.unwrap_or_default();
        let owner_id = input
            .user_id
            .clone()
            .unwrap_or_else(|| principal.user_id.clone());
        if owner_id != principal.user_id && principal.role != Role::Admin {
            return Err(AppError::Forbidden(
                "only admins create tokens for other users".to_owned(),
            ));
        }
        let mut tx = self.store().begin().await?;
        let owner = tx
            .get_user(&owner_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("user {owner_id}")))?;
        if owner.disabled {
            return Err(AppError::Conflict(format!(
                "user `{}` is disabled",
                owner.username
            )));
        }
        let owner_role: Role = owner
            .role
            .parse()
            .map_err(|e| AppError::Internal(format!("{e}")))?;
        if let Some(r) = role
            && !owner_role.covers(r)
        {
            return Err(ValidationErrors::single(
                "role",
                format!("cannot exceed the user's own role ({owner_role})"),
            )
            .into());
        }
        let secret = new_secret(TOKEN_PREFIX);
        let now = now_ms();
        let row = TokenRow {
            id: TokenId::new().to_string(),
            user_id: owner.id.clone(),
            name,
            digest: sha256(secret.as_bytes()),
            prefix: secret.chars().take(TOKEN_PREFIX.len() + 5).collect(),
            role: role.map(|r| r.as_str().to_owned()),
            created_at: now,
            expires_at: input
                .expires_in_days
                .map(|d| now + i64::from(d) * 86_400_000),
            last_used_at: None,
            revoked_at: None,
        };
        tx.insert_token(&row).await?;
        let ev = AuditEvent::new("", "token.created", format!("token:{}", row.id)).with_details(
            serde_json::json!({"user": owner.username, "name": row.name, "role": row.role}),
        );
        self.audit(&mut *tx, principal, ctx, ev).await?;
        tx.commit().await?;
        Ok(CreatedToken {
            token: ApiToken::try_from(row)?,
            secret,
        })
    }

    /// Tokens: all of them for admins, otherwise the principal's own.
    pub async fn list_tokens(&self, principal: &Principal) -> Result<Vec<ApiToken>, AppError> {
        let mut tx = self.store().read().await?;
        let filter = (principal.role != Role::Admin).then_some(principal.user_id.as_str());
        tx.list_tokens(filter)
            .await?
            .into_iter()
            .map(ApiToken::try_from)
            .collect()
    }

    pub async fn revoke_token(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<ApiToken, AppError> {
        let mut tx = self.store().begin().await?;
        let row = tx
            .get_token(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("token {id}")))?;
        if row.user_id != principal.user_id && principal.role != Role::Admin {
            // Do not reveal other users' token ids.
            return Err(AppError::NotFound(format!("token {id}")));
        }
        let now = now_ms();
        if tx.revoke_token(id, now).await? {
            self.audit(
                &mut *tx,
                principal,
                ctx,
                AuditEvent::new("", "token.revoked", format!("token:{id}")),
            )
            .await?;
        }
        let row = tx
            .get_token(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("token {id}")))?;
        tx.commit().await?;
        self.inner.api_tokens.clear();
        ApiToken::try_from(row)
    }

    /// Resolves a bearer token. Every failure is the same `Unauthenticated` to the caller.
    pub async fn authenticate_token(&self, secret: &str) -> Result<Principal, AppError> {
        if !secret.starts_with("sbt_") || secret.len() > 128 {
            return Err(AppError::Unauthenticated("not a Switchboard API token"));
        }
        let digest = sha256(secret.as_bytes());
        let key = hex::encode(&digest);
        let (p, expires_at) = self
            .inner
            .api_tokens
            .get_or_lookup(key, || {
                let (app, digest) = (self.clone(), digest.clone());
                async move { app.look_up_token(&digest).await }
            })
            .await?;
        if expires_at.is_some_and(|e| e <= now_ms()) {
            return Err(AppError::Unauthenticated("token expired"));
        }
        Ok(p)
    }

    /// A bearer token's principal and expiry, read from the database (see
    /// [`Self::authenticate_token`]); notes its use now and then.
    async fn look_up_token(&self, digest: &[u8]) -> Result<(Principal, Option<i64>), AppError> {
        let mut tx = self.store().read().await?;
        let (token, user) = tx
            .find_token_by_digest(digest)
            .await?
            .ok_or(AppError::Unauthenticated("unknown token"))?;
        drop(tx);
        let now = now_ms();
        if token.revoked_at.is_some() {
            return Err(AppError::Unauthenticated("token revoked"));
        }
        if token.expires_at.is_some_and(|e| e <= now) {
            return Err(AppError::Unauthenticated("token expired"));
        }
        if user.disabled {
            return Err(AppError::Unauthenticated("user disabled"));
        }
        if token.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY_MS) {
            let mut tx = self.store().begin().await?;
            tx.touch_token(&token.id, now).await?;
            tx.commit().await?;
        }
        let p = Principal {
            role: effective_role(&user, token.role.as_deref())?,
            user_id: user.id,
            username: user.username,
            display_name: user.display_name,
            via: AuthMethod::Token { id: token.id },
        };
        Ok((p, token.expires_at))
    }

    /// Console sign-in with username and password. Wrong user and wrong password look the same
    /// and take the same time.
    pub async fn sign_in_with_password(
        &self,
        ctx: &RequestContext,
        username: &str,
        password: &str,
    ) -> Result<NewSession, AppError> {
        let mut tx = self.store().read().await?;
        let user = tx.get_user_by_username(username.trim()).await?;
        drop(tx);
        let hash = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| dummy_hash().to_owned());
        let password = password.to_owned();
        let ok = blocking(move || verify_password(&password, &hash)).await?;
        match user {
            Some(u) if ok && u.password_hash.is_some() && !u.disabled => {
                self.start_session(ctx, &u, None, "password").await
            }
            _ => {
                let mut tx = self.store().begin().await?;
                let ev = AuditEvent::new("anonymous", "session.sign_in_failed", "")
                    .with_details(serde_json::json!({"method": "password"}))
                    .with_request_id(ctx.request_id.clone());
                self.append_audit(&mut *tx, &ev).await?;
                tx.commit().await?;
                Err(AppError::Unauthenticated("wrong username or password"))
            }
        }
    }

    /// Console sign-in with an API token: the session carries the token's effective role.
    pub async fn sign_in_with_token(
        &self,
        ctx: &RequestContext,
        secret: &str,
    ) -> Result<NewSession, AppError> {
        let p = self.authenticate_token(secret.trim()).await?;
        let mut tx = self.store().read().await?;
        let user = tx
            .get_user(&p.user_id)
            .await?
            .ok_or(AppError::Unauthenticated("unknown user"))?;
        drop(tx);
        self.start_session(ctx, &user, Some(p.role), "token").await
    }

    async fn start_session(
        &self,
        ctx: &RequestContext,
        user: &UserRow,
        narrowed: Option<Role>,
        method: &str,
    ) -> Result<NewSession, AppError> {
        let cookie = new_secret(SESSION_PREFIX);
        let csrf = new_secret("csrf");
        let now = now_ms();
        let ttl = i64::try_from(self.config().session_ttl_minutes).unwrap_or(720) * 60_000;
        let row = SessionRow {
            id: SessionId::new().to_string(),
            digest: sha256(cookie.as_bytes()),
            user_id: user.id.clone(),
            csrf: csrf.clone(),
            role: narrowed.map(|r| r.as_str().to_owned()),
            created_at: now,
            expires_at: now + ttl,
            revoked_at: None,
        };
        let principal = Principal {
            user_id: user.id.clone(),
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            role: effective_role(user, row.role.as_deref())?,
            via: AuthMethod::Session {
                id: row.id.clone(),
                csrf: csrf.clone(),
            },
        };
        let mut tx = self.store().begin().await?;
        tx.delete_expired_sessions(now).await?;
        tx.insert_session(&row).await?;
        let ev = AuditEvent::new("", "session.signed_in", format!("session:{}", row.id))
            .with_details(serde_json::json!({"method": method}));
        self.audit(&mut *tx, &principal, ctx, ev).await?;
        tx.commit().await?;
        Ok(NewSession {
            cookie,
            csrf,
            expires_at: row.expires_at,
            principal,
        })
    }

    /// Resolves a console session cookie (stored in the database, so it works on every replica).
    pub async fn authenticate_session(&self, cookie: &str) -> Result<Principal, AppError> {
        if !cookie.starts_with("sbs_") || cookie.len() > 128 {
            return Err(AppError::Unauthenticated("not a session"));
        }
        let mut tx = self.store().read().await?;
        let (session, user) = tx
            .find_session_by_digest(&sha256(cookie.as_bytes()))
            .await?
            .ok_or(AppError::Unauthenticated("unknown session"))?;
        if session.revoked_at.is_some() || session.expires_at <= now_ms() || user.disabled {
            return Err(AppError::Unauthenticated("session ended"));
        }
        Ok(Principal {
            role: effective_role(&user, session.role.as_deref())?,
            user_id: user.id,
            username: user.username,
            display_name: user.display_name,
            via: AuthMethod::Session {
                id: session.id,
                csrf: session.csrf,
            },
        })
    }

    pub async fn sign_out(
        &self,
        principal: &Principal,
        ctx: &RequestContext,
    ) -> Result<(), AppError> {
        if let AuthMethod::Session { id, .. } = &principal.via {
            let mut tx = self.store().begin().await?;
            if tx.revoke_session(id, now_ms()).await? {
                self.audit(
                    &mut *tx,
                    principal,
                    ctx,
                    AuditEvent::new("", "session.signed_out", format!("session:{id}")),
                )
                .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// On first start (no users at all): creates the bootstrap admin and an API token for it.
    /// Returns the token secret, which the caller shows once and writes to a 0600 file.
    pub async fn bootstrap(&self) -> Result<Option<CreatedToken>, AppError> {
        let mut tx = self.store().read().await?;
        let any = !tx.list_users().await?.is_empty();
        drop(tx);
        if any {
            return Ok(None);
        }
        let system = Principal::system();
        let ctx = RequestContext::default();
        let username = self.config().bootstrap_admin.clone();
        let user = match self
            .create_user(
                &system,
                &ctx,
                NewUser {
                    username,
                    display_name: Some("Bootstrap admin".to_owned()),
                    role: "admin".to_owned(),
                    password: None,
                },
            )
            .await
        {
            Ok(u) => u,
            // Another replica bootstrapped at the same moment.
            Err(AppError::Conflict(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let token = self
            .create_token(
                &system,
                &ctx,
                NewToken {
                    name: "bootstrap".to_owned(),
                    user_id: Some(user.id),
                    role: None,
                    expires_in_days: None,
                },
            )
            .await?;
        let path = self.config().bootstrap_token_path();
        crate::files::write_private(&path, format!("{}\n", token.secret).as_bytes())
            .map_err(|e| AppError::Internal(format!("writing {}: {e}", path.display())))?;
        Ok(Some(token))
    }
}
