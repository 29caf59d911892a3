// A labelled form field that shows, beside itself, the error the server's answer names it in
// (`error.field`, or a path under it such as `params.out`).
import { type ReactNode, useId } from 'react';

export interface FieldError {
  field?: string;
  message: string;
}

export function Field({
  label,
  name,
  error,
  hint,
  children,
}: {
  label: string;
  name: string;
  error: FieldError | null;
  hint?: string;
  children: (props: { id: string; 'aria-invalid': boolean; 'aria-describedby'?: string }) => ReactNode;
}) {
  const id = useId();
  const mine = error?.field === name || error?.field?.startsWith(`${name}.`);
  const described = [hint ? `${id}-hint` : '', mine ? `${id}-error` : ''].filter(Boolean).join(' ');
  return (
    <div className={`field${mine ? ' invalid' : ''}`}>
      <label htmlFor={id}>{label}</label>
      {children({ id, 'aria-invalid': !!mine, 'aria-describedby': described || undefined })}
      {hint && (
        <span className="hint" id={`${id}-hint`}>
          {hint}
        </span>
      )}
      {mine && (
        <span className="error" id={`${id}-error`} role="alert">
          {error?.message}
        </span>
      )}
    </div>
  );
}
