//! The group service's HTML, rendered on the server: no scripts beyond a confirm() on revoke.
//! Every value from the database or a visitor goes through [`esc`]. What a page shows depends
//! on who asks: the administrator sees requests, bundles and the buttons; members see the
//! group, its members and the revocation list.

use std::fmt::Write;

use super::service::{Overview, Policy};
use super::store::GroupRow;

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD` of a unix time (UTC), by Howard Hinnant's days-to-civil algorithm.
pub fn date(unix: i64) -> String {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The admin's session as pages need it: the CSRF token every form carries.
pub struct AdminView<'a> {
    pub csrf: &'a str,
}

pub fn layout(title: &str, admin: Option<&AdminView<'_>>, body: &str) -> String {
    let who = match admin {
        Some(a) => format!(
            r#"administrator · <form class="inline" method="post" action="/logout">{}<button id="logout">log out</button></form>"#,
            csrf_field(a.csrf)
        ),
        None => r#"member view · <a id="login" href="/login">administrator login</a>"#.to_owned(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · ringlet groups</title>
<style>
body {{ font-family: sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border-bottom: 1px solid #ccc; padding: .3rem; text-align: left; }}
form.inline {{ display: inline; }} .revoked {{ color: #999; text-decoration: line-through; }}
.error {{ background: #fdd; padding: .5rem; }} code {{ font-size: .85em; }}
</style></head>
<body><header><a href="/">ringlet groups</a> — {who}</header>
<h1>{title}</h1>
{body}
</body></html>"#,
        title = esc(title),
    )
}

fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

pub fn error(status: u16, message: &str) -> String {
    layout(
        &format!("Error {status}"),
        None,
        &format!(r#"<p class="error" id="error">{}</p>"#, esc(message)),
    )
}

pub fn login(failed: bool) -> String {
    let note = if failed {
        r#"<p class="error" id="error">That is not the login secret.</p>"#
    } else {
        ""
    };
    layout(
        "Administrator login",
        None,
        &format!(
            r#"{note}<p>The login secret was printed when the service first started and is kept in
<code>groups-admin.secret</code> in the node's state directory.</p>
<form method="post" action="/login"><input type="password" name="secret" id="secret" autocomplete="off">
<button id="login-submit">log in</button></form>"#
        ),
    )
}

pub fn index(groups: &[GroupRow], admin: Option<&AdminView<'_>>) -> String {
    let mut body = String::from("<h2>Groups</h2><ul id=\"groups\">");
    for g in groups {
        let _ = write!(
            body,
            r#"<li><a href="/groups/{name}">{name}</a> — {desc}</li>"#,
            name = esc(&g.name),
            desc = esc(&g.description)
        );
    }
    if groups.is_empty() {
        body.push_str("<li>none yet</li>");
    }
    body.push_str("</ul>");
    if let Some(a) = admin {
        let _ = write!(
            body,
            r#"<h2>Create a group</h2>
<form method="post" action="/groups" id="create">{csrf}
<p><label>Name <input name="name" id="name" required pattern="[A-Za-z0-9._-]{{1,64}}"></label></p>
<p><label>Description <input name="description" id="description" size="60"></label></p>
<p><label>Policy <select name="policy" id="policy">
<option value="manual">manual: I approve every request</option>
<option value="auto">auto-approve everyone who asks</option>
<option value="auto-up-to">auto-approve the first N, then manual</option></select></label>
<label>N <input name="limit" id="limit" type="number" min="1" value="5"></label></p>
<button id="create-submit">create group</button></form>"#,
            csrf = csrf_field(a.csrf)
        );
    }
    layout("Groups", admin, &body)
}

pub fn group(o: &Overview, admin: Option<&AdminView<'_>>, notice: Option<&str>) -> String {
    let name = esc(&o.group.name);
    let mut body = String::new();
    if let Some(n) = notice {
        let _ = write!(body, r#"<p class="notice" id="notice">{}</p>"#, esc(n));
    }
    let policy = match o.policy {
        Policy::Auto => "every request is approved".to_owned(),
        Policy::Manual => "the administrator approves each request".to_owned(),
        Policy::AutoUpTo(n) => format!(
            "the first {n} requests are approved ({} so far), then the administrator approves",
            o.group.auto_signed
        ),
    };
    let _ = write!(
        body,
        r#"<p id="description">{desc}</p><p>Policy: {policy}. CA key <code id="ca">{ca}</code>.
Join from a node with <code>ringlet group request --admin ADMIN-JID --group {name}</code>.</p>"#,
        desc = esc(&o.group.description),
        ca = hex::encode(o.ca_public),
    );
    if let Some(a) = admin {
        pending_table(&mut body, o, a);
    }
    members_table(&mut body, o, admin);
    let _ = write!(
        body,
        r#"<h2>Revocations</h2><p><a id="crl" href="/groups/{name}/crl">signed revocation list</a> ({} entries)</p><ul id="revocations">"#,
        o.revocations.len()
    );
    for r in &o.revocations {
        let _ = write!(body, "<li>{}</li>", esc(&r.what));
    }
    body.push_str("</ul>");
    layout(&o.group.name, admin, &body)
}

fn pending_table(body: &mut String, o: &Overview, a: &AdminView<'_>) {
    let name = esc(&o.group.name);
    body.push_str(r#"<h2>Pending requests</h2><table id="pending"><tr><th>#</th><th>user</th><th>node</th><th></th></tr>"#);
    for r in &o.pending {
        let node = crate::identity::NodeId::of_public_key(&r.node_key);
        let _ = write!(
            body,
            r#"<tr class="request" data-user="{user}"><td>{id}</td><td>{user}</td><td><code>{node}</code></td><td>
<form class="inline" method="post" action="/groups/{name}/requests/{id}/approve">{csrf}<button class="approve">approve</button></form>
<form class="inline" method="post" action="/groups/{name}/requests/{id}/deny">{csrf}<button class="deny">deny</button></form></td></tr>"#,
            id = r.id,
            user = esc(&r.user),
            csrf = csrf_field(a.csrf),
        );
    }
    if o.pending.is_empty() {
        body.push_str(r#"<tr><td colspan="4">none</td></tr>"#);
    }
    body.push_str("</table>");
}

fn members_table(body: &mut String, o: &Overview, admin: Option<&AdminView<'_>>) {
    let name = esc(&o.group.name);
    body.push_str(r#"<h2>Members</h2><table id="members"><tr><th>user</th><th>node</th><th>certificate</th><th>expires (UTC)</th><th></th></tr>"#);
    for m in &o.members {
        let class = if m.revoked { "member revoked" } else { "member" };
        let serial = format!("{:016x}", m.cert.serial);
        let mut actions = String::new();
        if let (Some(a), false) = (admin, m.revoked) {
            let key = hex::encode(m.cert.node_key);
            let _ = write!(
                actions,
                r#"<a class="bundle" href="/groups/{name}/bundle/{serial}">bundle</a>
<form class="inline" method="post" action="/groups/{name}/revoke" onsubmit="return confirm('Revoke every node of this user?')">{csrf}<input type="hidden" name="user" value="{user}"><button class="revoke-user">revoke user</button></form>
<form class="inline" method="post" action="/groups/{name}/revoke" onsubmit="return confirm('Revoke this node?')">{csrf}<input type="hidden" name="node_key" value="{key}"><button class="revoke-node">revoke node</button></form>"#,
                csrf = csrf_field(a.csrf),
                user = esc(&m.cert.user),
            );
        }
        let _ = write!(
            body,
            r#"<tr class="{class}" data-user="{user}"><td>{user}</td><td><code>{node}</code></td><td><code>{serial}</code></td><td>{expires}</td><td>{actions}</td></tr>"#,
            user = esc(&m.cert.user),
            node = m.node,
            expires = date(m.cert.expires),
        );
    }
    if o.members.is_empty() {
        body.push_str(r#"<tr><td colspan="5">none yet</td></tr>"#);
    }
    body.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_escaping() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_800_000_000), "2027-01-15");
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
