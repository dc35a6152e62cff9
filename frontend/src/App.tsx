import { QueryCache, QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { useCallback, useEffect, useState } from "react";
import { Navigate, RouterProvider, createHashRouter } from "react-router-dom";
import { getToken, onAuthChange } from "./api/auth";
import { ApiError } from "./api/errors";
import { Layout } from "./components/Layout";
import { ToastProvider, useToasts } from "./components/Toasts";
import { CALLBACK_PATH } from "./lib/oidc";
import { AccountPage } from "./pages/AccountPage";
import { ChatPage } from "./pages/ChatPage";
import { CodePage } from "./pages/CodePage";
import { DatasetsPage } from "./pages/DatasetsPage";
import { OidcCallback } from "./pages/OidcCallback";
import { OpsPage } from "./pages/OpsPage";
import { PipelinesPage } from "./pages/PipelinesPage";
import { SignInPage } from "./pages/SignInPage";
import { TasksPage } from "./pages/TasksPage";

// Hash routes: the app serves the built files as they are, so deep links need no server rule.
const router = createHashRouter([
  {
    path: "/",
    element: <Layout />,
    children: [
      { index: true, element: <Navigate to="/chat" replace /> },
      { path: "chat", element: <ChatPage /> },
      { path: "chat/:threadId", element: <ChatPage /> },
      { path: "code", element: <CodePage /> },
      { path: "datasets", element: <DatasetsPage /> },
      { path: "datasets/:datasetId", element: <DatasetsPage /> },
      { path: "pipelines", element: <PipelinesPage /> },
      { path: "pipelines/runs/:runId", element: <PipelinesPage /> },
      { path: "tasks", element: <TasksPage /> },
      { path: "tasks/:taskId", element: <TasksPage /> },
      { path: "account", element: <AccountPage /> },
      { path: "ops", element: <OpsPage /> },
      { path: "*", element: <Navigate to="/chat" replace /> },
    ],
  },
]);

function Queries({ children }: { children: React.ReactNode }) {
  const toasts = useToasts();
  const [client] = useState(
    () =>
      new QueryClient({
        queryCache: new QueryCache({
          // Background reads that fail with 429/5xx/timeouts say so once, in a toast.
          onError: (err, query) => {
            if (query.state.data !== undefined || (err instanceof ApiError && err.status === 429)) toasts.error(err);
          },
        }),
        defaultOptions: {
          queries: {
            retry: (count, err) => count < 2 && !(err instanceof ApiError && err.status < 500 && err.status !== 429),
            refetchOnWindowFocus: false,
            staleTime: 2000,
          },
        },
      }),
  );
  return <QueryClientProvider client={client}>{children}</QueryClientProvider>;
}

export function App() {
  const [token, setTokenState] = useState(getToken());
  const [reason, setReason] = useState<string | null>(null);
  // The IdP's redirect back (a real path, not a hash route: IdPs drop URL fragments).
  const [callback, setCallback] = useState(() => window.location.pathname === CALLBACK_PATH);
  const callbackDone = useCallback(() => setCallback(false), []);
  useEffect(
    () =>
      onAuthChange((why) => {
        setReason(why);
        setTokenState(getToken());
      }),
    [],
  );
  return (
    <ToastProvider>
      {callback ? (
        <OidcCallback onDone={callbackDone} />
      ) : token ? (
        <Queries key={token}>
          <RouterProvider router={router} />
        </Queries>
      ) : (
        <SignInPage reason={reason} />
      )}
    </ToastProvider>
  );
}
