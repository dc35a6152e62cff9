import { useQuery } from "@tanstack/react-query";
import { Activity, Boxes, Database, KeyRound, ListChecks, LogOut, MessageSquare, SquareTerminal, Workflow } from "lucide-react";
import { NavLink, Outlet } from "react-router-dom";
import { signOut } from "../api/auth";
import { api, call } from "../api/client";

const NAV = [
  { to: "/chat", label: "Chat", icon: MessageSquare },
  { to: "/code", label: "Code", icon: SquareTerminal },
  { to: "/datasets", label: "Datasets", icon: Database },
  { to: "/pipelines", label: "Pipelines", icon: Workflow },
  { to: "/tasks", label: "Tasks", icon: ListChecks },
  { to: "/account", label: "API keys", icon: KeyRound },
];

export function Layout() {
  const me = useQuery({ queryKey: ["me"], queryFn: () => call(api.GET("/api/me")), staleTime: 60_000 });
  const who = me.data?.name || me.data?.email || me.data?.id || "…";
  // Admins (CORRAL_ADMIN_USER_IDS) also get the Operations page.
  const nav = me.data?.admin ? [...NAV, { to: "/ops", label: "Operations", icon: Activity }] : NAV;
  return (
    <div className="shell">
      <nav className="rail" aria-label="Main">
        <div className="brand">
          <span className="logo"><Boxes size={18} /></span>
          <span>Corral</span>
        </div>
        {nav.map((n) => (
          <NavLink key={n.to} to={n.to} className={({ isActive }) => `rail-link ${isActive ? "active" : ""}`} data-testid={`nav-${n.label.toLowerCase().replace(" ", "-")}`}>
            <n.icon className="rail-icon" size={18} aria-hidden />
            <span>{n.label}</span>
          </NavLink>
        ))}
        <div className="grow" />
        <div className="rail-user" title={me.data?.id}>
          <div className="avatar">{who.slice(0, 1).toUpperCase()}</div>
          <div className="rail-user-name">{who}</div>
        </div>
        <button className="rail-link rail-signout" onClick={() => signOut(null)}>
          <LogOut className="rail-icon" size={16} aria-hidden />
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
