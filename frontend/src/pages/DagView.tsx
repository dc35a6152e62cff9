import { NODE_H, NODE_W, layoutDag, type StepLike } from "../lib/dag";

const COLORS: Record<string, { fill: string; stroke: string; text: string }> = {
  pending: { fill: "#f8fafc", stroke: "#cbd5e1", text: "#64748b" },
  queued: { fill: "#f1f5f9", stroke: "#94a3b8", text: "#475569" },
  running: { fill: "#eef2ff", stroke: "#6366f1", text: "#3730a3" },
  done: { fill: "#ecfdf5", stroke: "#10b981", text: "#065f46" },
  failed: { fill: "#fef2f2", stroke: "#ef4444", text: "#991b1b" },
  skipped: { fill: "#f8fafc", stroke: "#cbd5e1", text: "#94a3b8" },
  cancelled: { fill: "#fffbeb", stroke: "#f59e0b", text: "#92400e" },
};

const ICON: Record<string, string> = { pending: "○", queued: "◔", running: "◐", done: "✓", failed: "✕", skipped: "–", cancelled: "■" };

/** The pipeline as a graph; each node shows its step's status and opens its output on click. */
export function DagView({
  steps,
  statuses,
  selected,
  onSelect,
  detail,
}: {
  steps: StepLike[];
  statuses: Record<string, string>;
  selected?: string | null;
  onSelect?: (name: string) => void;
  detail?: Record<string, string>;
}) {
  const layout = layoutDag(steps);
  const statusOf = (n: string) => statuses[n] ?? "pending";
  return (
    <div className="dag-scroll">
      <svg className="dag" width={layout.width} height={layout.height} viewBox={`0 0 ${layout.width} ${layout.height}`} role="img" aria-label="Pipeline graph">
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M 0 0 L 10 5 L 0 10 z" fill="#94a3b8" />
          </marker>
        </defs>
        {layout.edges.map((e) => {
          const done = statusOf(e.from) === "done";
          return <path key={`${e.from}-${e.to}`} d={e.path} className={`dag-edge ${done ? "dag-edge-done" : ""}`} markerEnd="url(#arrow)" />;
        })}
        {layout.nodes.map((n) => {
          const status = statusOf(n.name);
          const c = COLORS[status] ?? COLORS.pending!;
          return (
            <g
              key={n.name}
              transform={`translate(${n.x},${n.y})`}
              className={`dag-node ${onSelect ? "clickable" : ""} ${selected === n.name ? "selected" : ""} ${status === "running" ? "running" : ""}`}
              onClick={() => onSelect?.(n.name)}
              data-testid="dag-node"
              data-step={n.name}
              data-status={status}
              role={onSelect ? "button" : undefined}
              tabIndex={onSelect ? 0 : undefined}
              onKeyDown={(e) => (e.key === "Enter" || e.key === " ") && onSelect?.(n.name)}
            >
              <rect width={NODE_W} height={NODE_H} rx={12} fill={c.fill} stroke={selected === n.name ? "#4f46e5" : c.stroke} strokeWidth={selected === n.name ? 2.5 : 1.5} />
              <circle cx={22} cy={NODE_H / 2} r={11} fill={c.stroke} opacity={0.15} />
              <text x={22} y={NODE_H / 2 + 4.5} textAnchor="middle" fontSize={13} fill={c.text} fontWeight={700}>
                {ICON[status] ?? "○"}
              </text>
              <text x={42} y={27} fontSize={14} fontWeight={600} fill="#0f172a">
                {n.name.length > 18 ? `${n.name.slice(0, 17)}…` : n.name}
              </text>
              <text x={42} y={46} fontSize={12} fill={c.text}>
                {status}
                {detail?.[n.name] ? ` · ${detail[n.name]}` : ""}
              </text>
            </g>
          );
        })}
      </svg>
    </div>
  );
}
