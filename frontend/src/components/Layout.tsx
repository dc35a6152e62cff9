import { useQuery } from "@tanstack/react-query";
import { NavLink, Outlet } from "react-router-dom";
import { signOut } from "../api/auth";
import { api, call } from "../api/client";

const NAV = [
  { to: "/chat", label: "Chat", icon: "💬" },
  { to: "/code", label: "Code", icon: "⌨" },
  { to: "/datasets", label: "Datasets", icon: "▦" },
  { to: "/pipelines", label: "Pipelines", icon: "⛓" },
  { to: "/tasks", label: "Tasks", icon: "◷" },
  { to: "/account", label: "API keys", icon: "🔑" },
];

export function Layout() {
  const me = useQuery({ queryKey: ["me"], queryFn: () => call(api.GET("/api/me")), staleTime: 60_000 });
  const who = me.data?.name || me.data?.email || me.data?.id || "…";
  return (
    <div className="shell">
      <nav className="rail" aria-label="Main">
        <div className="brand">
          <img src="/favicon.svg" alt="" width={28} height={28} />
          <span>Corral</span>
        </div>
        {NAV.map((n) => (
          <NavLink key={n.to} to={n.to} className={({ isActive }) => `rail-link ${isActive ? "active" : ""}`} data-testid={`nav-${n.label.toLowerCase().replace(" ", "-")}`}>
            <span className="rail-icon" aria-hidden>
              {n.icon}
            </span>
            <span>{n.label}</span>
          </NavLink>
        ))}
        <div className="grow" />
        <div className="rail-user" title={me.data?.id}>
          <div className="avatar">{who.slice(0, 1).toUpperCase()}</div>
          <div className="rail-user-name">{who}</div>
        </div>
        <button className="rail-link rail-signout" onClick={() => signOut(null)}>
          <span className="rail-icon" aria-hidden>
            ⎋
          </span>
          <span>Sign out</span>
        </button>
      </nav>
      <main className="main">
        <Outlet />
      </main>
    </div>
  );
}

export function PageHeader({ title, subtitle, actions }: { title: string; subtitle?: React.ReactNode; actions?: React.ReactNode }) {
  return (
    <header className="page-header">
      <div>
        <h1>{title}</h1>
        {subtitle ? <p className="muted">{subtitle}</p> : null}
      </div>
      <div className="page-actions">{actions}</div>
    </header>
  );
}
