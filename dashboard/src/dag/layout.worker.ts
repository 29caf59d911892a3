// Lays the DAG out off the main thread: the page posts the shape, this answers the layout.
import { layout, type ShapeStep } from './layout';

interface Request {
  seq: number;
  steps: ShapeStep[];
  expanded: Record<string, number>;
}

self.onmessage = (e: MessageEvent<Request>) => {
  const { seq, steps, expanded } = e.data;
  self.postMessage({ seq, layout: layout(steps, expanded) });
};
