import { useCallback, useEffect, useMemo, useState } from 'react';
import { api, ApiError, onUnauthenticated, setCsrfToken, type WhoAmI } from './api';
import { Link, navigate, useLocation } from './router';
import { SessionContext, useSession } from './session';
import { LoginPage } from './pages/Login';
import { RunsPage } from './pages/Runs';
import { RunPage } from './pages/Run';
import { NewRunPage } from './pages/NewRun';
import { AgentsPage } from './pages/Agents';
import { DesignerPage } from './pages/Designer';
import { SchedulesPage } from './pages/Schedules';
import { SchedulePage } from './pages/Schedule';

type Phase = 'loading' | 'anonymous' | 'ready' | 'unreachable';

export function App() {
  const [me, setMeState] = useState<WhoAmI | null>(null);
  const [phase, setPhase] = useState<Phase>('loading');
  const { pathname } = useLocation();

  const setMe = useCallback((who: WhoAmI | null) => {
    setCsrfToken(who?.csrf_token);
    setMeState(who);
    setPhase(who ? 'ready' : 'anonymous');
  }, []);

  useEffect(() => {
    let live = true;
    api
      .whoami()
      .then((who) => live && setMe(who))
      .catch((e) => {
        if (!live) return;
        if (e instanceof ApiError && (e.status === 401 || e.status === 403)) setMe(null);
        else setPhase('unreachable');
      });
    return () => {
      live = false;
    };
  }, [setMe]);

  useEffect(() => onUnauthenticated(() => setMe(null)), [setMe]);

  const session = useMemo(() => ({ me, setMe }), [me, setMe]);

  if (phase === 'loading') return <p className="centered">Loading…</p>;
  if (phase === 'unreachable') {
    return (
      <p className="centered error" role="alert">
        The coordinator cannot be reached. Reload the page to try again.
      </p>
    );
  }
  if (phase === 'anonymous' || !me) {
    return (
      <SessionContext.Provider value={session}>
        <LoginPage />
      </SessionContext.Provider>
    );
  }

  let page;
  const run = pathname.match(/^\/runs\/(\d+)\/?$/);
  const designer = pathname.match(/^\/designer(?:\/([^/]+))?\/?$/);
  const schedule = pathname.match(/^\/schedules\/([^/]+)\/?$/);
  if (pathname === '/runs/new') page = <NewRunPage />;
  else if (run) page = <RunPage id={Number(run[1])} />;
  else if (pathname === '/agents') page = <AgentsPage />;
  else if (pathname === '/schedules' || pathname === '/schedules/') page = <SchedulesPage />;
  else if (schedule) page = <SchedulePage key={schedule[1]} name={safeDecode(schedule[1])} />;
  else if (designer) page = <DesignerPage name={designer[1] && safeDecode(designer[1])} />;
  else if (pathname === '/' || pathname === '/runs' || pathname === '/login') page = <RunsPage />;
  else {
    page = (
      <main className="page">
        <h1>Not found</h1>
        <p>
          No page at <code>{pathname}</code>. <Link href="/runs">Go to the runs</Link>.
        </p>
      </main>
    );
  }

  return (
    <SessionContext.Provider value={session}>
      <Header />
      {page}
    </SessionContext.Provider>
  );
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function Header() {
  const { me, setMe } = useSession();
  const { pathname } = useLocation();
  const logout = async () => {
    try {
      await api.logout();
    } finally {
      setMe(null);
      navigate('/runs', { replace: true });
    }
  };
  const current = (p: string) =>
    pathname === p || pathname.startsWith(`${p}/`) || (p === '/runs' && pathname === '/')
      ? 'page'
      : undefined;
  return (
    <header className="topbar">
      <span className="brand">Ferry</span>
      <nav aria-label="Main">
        <Link href="/runs" aria-current={current('/runs')}>
          Runs
        </Link>
        <Link href="/schedules" aria-current={current('/schedules')}>
          Schedules
        </Link>
        <Link href="/designer" aria-current={current('/designer')}>
          Designer
        </Link>
        <Link href="/agents" aria-current={current('/agents')}>
          Agents
        </Link>
      </nav>
      <span className="who" data-testid="who">
        {me?.name} <span className="roles">({me?.roles.join(', ') || 'no roles'})</span>
      </span>
      {me?.auth_enabled && (
        <button type="button" onClick={logout}>
          Log out
        </button>
      )}
    </header>
  );
}
