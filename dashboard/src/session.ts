import { createContext, useContext } from 'react';
import type { WhoAmI } from './api';

export interface SessionState {
  me: WhoAmI | null;
  setMe: (me: WhoAmI | null) => void;
}

export const SessionContext = createContext<SessionState>({ me: null, setMe: () => {} });

export function useSession(): SessionState {
  return useContext(SessionContext);
}
