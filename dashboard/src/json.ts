// Reading JSON leniently (documents from agents and the API) and strictly (what a user types).

export type JsonObject = Record<string, unknown>;

/** `v` as a plain object, or null for anything else (arrays included). */
export function asObject(v: unknown): JsonObject | null {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as JsonObject) : null;
}

/** `v` when it is a finite number. */
export function finiteNumber(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/** The object a user typed as JSON, or why it is not one. */
export function parseJsonObject(text: string): { value?: JsonObject; error?: string } {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return { error: `Not valid JSON: ${e instanceof Error ? e.message : String(e)}` };
  }
  const o = asObject(v);
  return o ? { value: o } : { error: 'Must be a JSON object ({ … }).' };
}

/** The plain objects in `v` when it is an array (anything else in it is skipped). */
export function objects(v: unknown): JsonObject[] {
  return Array.isArray(v) ? v.map(asObject).filter((o): o is JsonObject => o !== null) : [];
}
