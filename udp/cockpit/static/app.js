// The cockpit: the city at a glance, live. Everything comes from the platform's open APIs: OGC API Features
// (/ogcapi) for the map layers, the latest value per Datastream and the indicators per area; the SensorThings
// API (/v1.1) for Things, Datastreams and time series; MQTT over WebSockets (the SensorThings MQTT extension)
// for live Observations, with polling as the fallback. No build step; the libraries are vendored.
// The map is MapLibre (one copy, the OGC API pages'): the collections from the platform's own vector tiles in the
// colours of its own style, so that a layer of a million features stays smooth; the sensors and the indicator areas
// from the client's own GeoJSON, since their values change live.
// Signing in (HTTP Basic, kept in sessionStorage for this tab only) makes every request carry the user's
// credentials, so what the city keeps internal (collections, sensors) is shown; signing out shows the public data.
// Where the platform takes citizens' feedback (the collection `feedback`), anyone tells the city something at a place
// (OGC API Features Part 4: a POST), sees what is published and answered, live (MQTT `feedback/#`); moderators
// publish, reject and answer from a queue (PATCH). What citizens write is only ever shown as text.
import uPlot from './vendor/uplot-1.6.32/uPlot.esm.js';
import * as maplibregl from '../ogcapi/static/vendor/maplibre-gl-6.20.0/maplibre-gl.mjs';

maplibregl.setWorkerUrl(new URL('../ogcapi/static/vendor/maplibre-gl-6.20.0/maplibre-gl-worker.mjs',
  import.meta.url).href);

const BASE = new URL('../', location.href); // the platform root, wherever it is mounted
const STA = new URL('v1.1/', BASE).href;
const OGC = new URL('ogcapi/', BASE).href;
const FEEDBACK = 'feedback'; // the collection of citizens' feedback (config.yml `feedback:`), when there is one
// the cockpit draws the sensors and the feedback itself, from GeoJSON it keeps live, not from the (cached) tiles
const NOT_LAYERS = new Set(['things', 'locations', 'features_of_interest', 'latest_values', FEEDBACK]);
const MQTT_UPDATES = 'http://www.opengis.net/spec/iot_sensing/1.1/req/receive-updates-via-mqtt/receive-updates';
const PAGE = 1000; // features per request when reading an indicator's areas
const FEATURE_CAP = 20000; // areas read per indicator at most
const SMALL_AREA_LAYER = 150; // polygon layers up to this size are on at start
const POLL_MS = 10000;
const FLUSH_MS = 100;
const CATALOGUE_LIMIT = 50; // datasets listed per search
const LIVE_PAD = 0.3; // sensors this far beyond the map's view (a share of it) are followed live too
const STALE_MS = 5000;
const DAY_MS = 24 * 3600 * 1000;
// colour-blind-safe sequential scales (viridis for sensors, yellow-red for indicator areas)
const VIRIDIS = ['#440154', '#414487', '#2a788e', '#22a884', '#7ad151', '#fde725'];
const HEAT = ['#fff1a8', '#fec44f', '#fb8b24', '#dd4b1a', '#9e1c1c'];
const NO_VALUE = '#a3aab3';
const HIGHLIGHT = '#c2410c';
const AUTH_KEY = 'udp.cockpit.signIn'; // sessionStorage only: the sign-in ends with the tab, never in localStorage
const INTERNAL_THINGS = "Thing/properties/udpAccess eq 'internal'"; // how `access: internal` marks a table's Things
const FEEDBACK_PUBLIC = new Set(['published', 'in progress', 'answered']); // what anyone sees of the feedback
const FEEDBACK_STATUS = { received: 'waiting for moderation', published: 'published', 'in progress': 'in progress',
  answered: 'answered', rejected: 'rejected' };
const FEEDBACK_MAX = 2000; // characters of a message, as the server counts them (code points)
const FEEDBACK_LISTED = 100; // published messages listed, the newest

const $ = (sel) => document.querySelector(sel);

const state = {
  map: null,
  loaded: null, // the map's first style load (a promise): sources and layers are added after it
  tip: null, // the popup following the pointer: a sensor's values, an area's, a feature's name
  tipTarget: null, // what it shows
  popup: null, // the clicked feature's properties
  tileZoom: undefined, // the deepest zoom the platform makes tiles for
  collections: [],
  layers: new Map(), // collection id -> layer record
  sensors: new Map(), // Datastream id -> sensor record
  groups: new Map(), // place + observed property -> marker group (one property shown)
  places: new Map(), // place -> marker group (every property shown)
  markers: new Map(), // a marker's feature id on the map -> its group (one of groups or places)
  scales: new Map(), // observed property -> colour scale
  property: '',
  live: 'connecting',
  client: null,
  subscribed: new Set(), // Datastreams whose subscription the broker acknowledged (SUBACK)
  subscribing: new Map(), // Datastream id -> the subscribe request not yet acknowledged
  pinned: new Set(), // Datastreams followed whatever the view: the open Thing's, the charted one
  syncTimer: null,
  pollTimer: null,
  dirty: new Set(),
  flushTimer: null,
  tiles: new Map(), // Datastream id -> tile record
  choropleth: null,
  indicatorCollections: [],
  selected: null,
  chart: null,
  ready: false,
  auth: null, // { name, basic }: the signed-in user and their Basic credentials, null when anonymous
  started: null, // the first load (a promise)
  reloading: Promise.resolve(), // reloads after signing in or out, one after the other
  me: null, // the platform's /me for this tab before signing in: whether the city's issuer signs in here
  internalTimer: null,
  internalBusy: false,
  catalogueQuery: null, // the Data page's latest search (an older answer arriving late is dropped)
  feedback: null, // { categories, items, moderator, picking, place, ... } when the platform takes feedback
  feedbackLive: 'off', // the subscription to `feedback/#`: 'off', 'asking', 'on' (the broker acknowledged it)
  feedbackTimer: null, // a read of the items again, soon (several announcements, one read)
};

// ---------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** A SensorThings or OGC API URL with query options (values are encoded, `$` names kept readable). */
function api(root, path, params = {}) {
  const url = new URL(path, root);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  return url.href.replace(/%24/g, '$');
}

/** A link the server wrote, on this page's origin (the server may know itself under another host name). */
function sameOrigin(href) {
  const url = new URL(href, location.href);
  if (url.origin === location.origin) return url.href;
  return new URL(url.pathname + url.search, location.origin).href;
}

/** Request options carrying the signed-in user's credentials to the platform, when there is one; for fetch() and
 * for the map's tile requests alike. */
function signedIn(url) {
  if (!state.auth || new URL(url, location.href).origin !== location.origin) return {};
  // the credentials go to this platform only; `omit` keeps the browser from asking for a password itself on a
  // 401, and `no-store` keeps signed-in answers out of the HTTP cache, which keys on the URL and not on who
  // asked: nothing internal is served from it after signing out, nothing public in place of the internal
  return { headers: { Authorization: authorization(state.auth) }, credentials: 'omit', cache: 'no-store' };
}

/** The Authorization header of a sign-in: Basic for a user of the platform, Bearer for the city's account. */
function authorization(auth) {
  return auth.bearer ? `Bearer ${auth.bearer}` : `Basic ${auth.basic}`;
}

/** Every page of features from `url` on, following `next` links, until there are at least `cap`. */
async function readAll(url, cap = Infinity) {
  const features = [];
  let matched = null;
  while (url && features.length < cap) {
    const page = await getJSON(url);
    matched = page.numberMatched ?? matched;
    features.push(...(page.features || []));
    const next = (page.links || []).find((link) => link.rel === 'next');
    url = next && page.features?.length ? sameOrigin(next.href) : null;
  }
  return features;
}

async function getJSON(url) {
  const auth = signedIn(url);
  const response = await fetch(url, { ...auth,
    headers: { Accept: 'application/json, application/geo+json;q=0.9', ...auth.headers } });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).message || message; } catch { /* not JSON */ }
    throw new Error(`${response.status} ${message}`);
  }
  return response.json();
}

function plural(n, word) {
  return `${fmt(n)} ${word}${n === 1 ? '' : 's'}`;
}

function quote(text) {
  return `'${String(text).replace(/'/g, "''")}'`;
}

function numeric(result) {
  if (typeof result === 'number' && Number.isFinite(result)) return result;
  if (typeof result === 'boolean') return result ? 1 : 0;
  return null;
}

/** The end of an ISO 8601 interval, or the instant itself. */
function endOf(time) {
  if (!time) return null;
  const text = String(time);
  return text.includes('/') ? text.split('/').pop() : text;
}

function idFromLink(link) {
  const match = /Datastreams\((\d+)\)/.exec(link || '');
  return match ? Number(match[1]) : null;
}

function unitText(symbol) {
  if (!symbol) return '';
  // UCUM annotations such as {count} are read as the word
  return String(symbol).replace(/^\{(.*)\}$/, '$1').replace(/^ug\/m3$/, 'µg/m³');
}

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

function fmt(value) {
  if (value === null || value === undefined) return '–';
  if (typeof value === 'number') {
    const abs = Math.abs(value);
    if (abs !== 0 && abs < 0.001) return value.toExponential(2);
    return new Intl.NumberFormat(undefined, { maximumFractionDigits: abs >= 100 ? 0 : abs >= 1 ? 2 : 4 })
      .format(value);
  }
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

function fmtTime(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const sameDay = new Date().toDateString() === date.toDateString();
  return sameDay
    ? date.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : date.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit',
      minute: '2-digit' });
}

function timeEl(iso) {
  return iso ? el('time', { datetime: iso, text: fmtTime(iso) }) : el('span', { class: 'muted', text: '–' });
}

function note(text) {
  $('#map-note').textContent = text || '';
}

/** Quantile class breaks over the values, at most `classes` classes. */
function makeScale(values, palette) {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (!sorted.length) return null;
  const classes = palette.length;
  const breaks = [];
  for (let i = 1; i < classes; i += 1) {
    const value = sorted[Math.floor((i / classes) * (sorted.length - 1))];
    if (value > sorted[0] && !breaks.includes(value)) breaks.push(value);
  }
  const step = breaks.length ? (palette.length - 1) / breaks.length : 0;
  const colours = [];
  for (let i = 0; i <= breaks.length; i += 1) colours.push(palette[Math.round(i * step)]);
  return { breaks, colours, min: sorted[0], max: sorted[sorted.length - 1] };
}

function colourOf(scale, value) {
  if (!scale || value === null || value === undefined || !Number.isFinite(value)) return NO_VALUE;
  let i = 0;
  while (i < scale.breaks.length && value >= scale.breaks[i]) i += 1;
  return scale.colours[i];
}

function legend(container, title, scale, unit, round) {
  container.replaceChildren();
  if (!scale) return;
  container.append(el('p', { class: 'title', text: title }));
  const items = [];
  const { breaks, colours } = scale;
  const u = unit ? ` ${unit}` : '';
  for (let i = 0; i < colours.length; i += 1) {
    let label;
    if (!breaks.length) label = `${fmt(scale.min)}${u}`;
    else if (i === 0) label = `below ${fmt(breaks[0])}${u}`;
    else if (i === breaks.length) label = `${fmt(breaks[i - 1])}${u} or more`;
    else label = `${fmt(breaks[i - 1])} to ${fmt(breaks[i])}${u}`;
    items.push(el('li', {}, el('span', { class: `swatch${round ? ' round' : ''}`, style: `background:${colours[i]}`,
      'aria-hidden': 'true' }), label));
  }
  items.push(el('li', {}, el('span', { class: `swatch${round ? ' round' : ''}`, style: `background:${NO_VALUE}`,
    'aria-hidden': 'true' }), 'no numeric value'));
  container.append(el('ul', { 'aria-label': title }, items));
}

function featureName(props) {
  const keys = Object.keys(props || {});
  const pick = keys.find((k) => /^name_?eng$/i.test(k) || /_ENG_NM$/i.test(k))
    || keys.find((k) => /^(name|title|label)$/i.test(k))
    || keys.find((k) => /(name|_nm$|명)/i.test(k) && typeof props[k] === 'string' && props[k].trim());
  return pick ? String(props[pick]).trim() : '';
}

function propertiesTable(props) {
  const rows = Object.entries(props || {}).filter(([, v]) => v !== null && v !== '' && typeof v !== 'object')
    .slice(0, 16)
    .map(([k, v]) => el('tr', {}, el('th', { scope: 'row', text: k }), el('td', { text: String(v) })));
  return el('table', {}, el('tbody', {}, rows));
}

// ---------------------------------------------------------------- the map and its layers

const EMPTY = { type: 'FeatureCollection', features: [] };
const NOTHING = ['==', ['id'], -1]; // a filter no feature passes: the highlights when nothing is chosen
const SENSOR_PAINT = { 'circle-color': ['get', 'colour'], 'circle-opacity': 0.95, 'circle-stroke-color': '#111827',
  'circle-radius': 7, 'circle-stroke-width': 1.5 };

/** The map with its own layers, which the collections' are put between: polygons and lines under the indicator
 * areas, points over them, the sensors on top. The ground is plain (no basemap from elsewhere: the city's own
 * boundary collections are the base); the sensors and the areas are GeoJSON sources the cockpit keeps live. */
function initMap() {
  const map = new maplibregl.Map({
    container: 'map', center: [0, 20], zoom: 1, minZoom: 1, dragRotate: false, pitchWithRotate: false,
    attributionControl: { compact: false, customAttribution: 'Layers: this platform\'s OGC API Features and Tiles' },
    // the tiles of what the city keeps internal are read with the signed-in user's credentials, as the rest is
    transformRequest: (url) => ({ url, ...signedIn(url) }),
    style: {
      version: 8,
      sources: { choropleth: { type: 'geojson', data: EMPTY }, sensors: { type: 'geojson', data: EMPTY },
        feedback: { type: 'geojson', data: EMPTY }, 'feedback-place': { type: 'geojson', data: EMPTY } },
      layers: [
        { id: 'background', type: 'background', paint: { 'background-color': '#e3e8ee' } },
        { id: 'choropleth-fill', type: 'fill', source: 'choropleth',
          paint: { 'fill-color': ['get', 'colour'], 'fill-opacity': 0.72 } },
        { id: 'choropleth-line', type: 'line', source: 'choropleth',
          paint: { 'line-color': '#3b2f2f', 'line-width': 1.2, 'line-opacity': 0.9 } },
        { id: 'choropleth-selected', type: 'line', source: 'choropleth', filter: NOTHING,
          paint: { 'line-color': HIGHLIGHT, 'line-width': 3.5 } },
        // published feedback; an answered message ringed
        { id: 'feedback', type: 'circle', source: 'feedback', paint: { 'circle-color': NO_VALUE, 'circle-radius': 6.5,
          'circle-stroke-color': ['case', ['==', ['get', 'status'], 'answered'], '#111827', '#fff'],
          'circle-stroke-width': ['case', ['==', ['get', 'status'], 'answered'], 3, 1.5] } },
        { id: 'feedback-place', type: 'circle', source: 'feedback-place', paint: { 'circle-color': HIGHLIGHT,
          'circle-radius': 8, 'circle-stroke-color': '#fff', 'circle-stroke-width': 2.5 } },
        { id: 'sensors', type: 'circle', source: 'sensors', filter: NOTHING, paint: SENSOR_PAINT },
        { id: 'sensors-selected', type: 'circle', source: 'sensors', filter: NOTHING,
          paint: { ...SENSOR_PAINT, 'circle-radius': 10, 'circle-stroke-color': HIGHLIGHT,
            'circle-stroke-width': 3.5 } },
      ],
    },
  });
  map.touchZoomRotate.disableRotation();
  map.keyboard.disableRotation();
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
  state.map = map;
  state.loaded = new Promise((resolve) => { map.once('load', resolve); });
  state.tip = new maplibregl.Popup({ closeButton: false, closeOnClick: false, offset: 10, maxWidth: '300px',
    className: 'map-tip' });
  map.on('moveend', scheduleSync);
  map.on('mousemove', (event) => showTip(targetAt(event.point), event.lngLat));
  map.on('mouseout', () => showTip(null));
  // while a citizen chooses the place of a message, a click is that place
  map.on('click', (event) => (state.feedback?.picking ? pickPlace(event.lngLat)
    : openTarget(targetAt(event.point), event.lngLat)));
  map.on('error', (event) => {
    const record = String(event.sourceId || '').startsWith('layer:') && state.layers.get(event.sourceId.slice(6));
    if (record) note(`${record.title}: ${event.error?.message || 'the tiles could not be read'}`);
    console.warn('map:', event.error?.message || event.error);
  });
}

/** A collection's extent as [west, south, east, north] (its bbox may have heights), or null. */
function boxOf(collection) {
  const b = collection?.extent?.spatial?.bbox?.[0];
  if (!b) return null;
  return b.length === 6 ? [b[0], b[1], b[3], b[4]] : b.slice(0, 4);
}

/** Whether a box is a city's, not most of the world's (a collection without an extent of its own says the world). */
function local(box) {
  return Boolean(box) && box[2] - box[0] < 90;
}

/** A GeoJSON geometry's positions, in one list. */
function positionsOf(geometry) {
  const positions = [];
  const walk = (c) => {
    if (typeof c[0] === 'number') positions.push(c);
    else c.forEach(walk);
  };
  if (geometry?.type === 'GeometryCollection') geometry.geometries.forEach((g) => walk(g.coordinates));
  else if (geometry?.coordinates) walk(geometry.coordinates);
  return positions;
}

/** The bounds of a GeoJSON geometry, or null when it has no positions. */
function boundsOf(geometry) {
  const positions = positionsOf(geometry);
  if (!positions.length) return null;
  const bounds = new maplibregl.LngLatBounds();
  positions.forEach((c) => bounds.extend([c[0], c[1]]));
  return bounds;
}

/** Bounds as a box, [west, south, east, north], `pad` of their size wider on every side. */
function boxOfBounds(b, pad = 0) {
  const dx = (b.getEast() - b.getWest()) * pad;
  const dy = (b.getNorth() - b.getSouth()) * pad;
  return [b.getWest() - dx, b.getSouth() - dy, b.getEast() + dx, b.getNorth() + dy];
}

/** The map's view as a box within the world, `pad` of its size wider on every side. */
function viewBox(pad = 0) {
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const [w, s, e, n] = boxOfBounds(state.map.getBounds(), pad);
  return [clamp(w, -180, 180), clamp(s, -90, 90), clamp(e, -180, 180), clamp(n, -90, 90)];
}

/** Whether a box lies within another (a point is a box of no size: [lng, lat, lng, lat]). */
function within(inner, outer) {
  return inner[0] >= outer[0] && inner[1] >= outer[1] && inner[2] <= outer[2] && inner[3] <= outer[3];
}

function bboxParam(box) {
  return box.map((v) => v.toFixed(6)).join(',');
}

function fitBox(box, options = {}) {
  state.map.fitBounds([[box[0], box[1]], [box[2], box[3]]], { padding: 10, ...options });
}

/** What a pointer is on, top first: a sensor's marker, an indicator area, a collection's feature; null for none. A
 * few pixels around it count, so that a small point is easy to hit. */
function targetAt(point) {
  const map = state.map;
  const layers = ['sensors', 'choropleth-fill', ...[...state.layers.values()].flatMap((r) => r.mapLayers || [])]
    .filter((id) => map.getLayer(id));
  const box = [[point.x - 4, point.y - 4], [point.x + 4, point.y + 4]];
  for (const feature of map.queryRenderedFeatures(box, { layers })) {
    if (feature.source === 'sensors') {
      const group = state.markers.get(feature.id);
      if (group) return { kind: 'sensor', group };
    } else if (feature.source === 'choropleth') {
      const area = state.choropleth?.areas[feature.id];
      if (area) return { kind: 'area', area };
    } else if (feature.source === FEEDBACK) {
      const item = state.feedback?.items.get(String(feature.id));
      if (item) return { kind: 'feedback', item };
    } else {
      const record = state.layers.get(feature.source.replace(/^layer:/, ''));
      if (record) return { kind: 'feature', record, properties: feature.properties };
    }
  }
  return null;
}

/** The popup following the pointer: a sensor's values (kept live while it shows), an area's value, a feature's name
 * or how many features a point stands for. Text only: the data's own words are never read as markup. */
function showTip(target, lngLat) {
  const content = target && tipOf(target);
  state.map.getCanvas().style.cursor = state.feedback?.picking ? 'crosshair' : target ? 'pointer' : '';
  state.tipTarget = content ? target : null;
  if (!content) {
    state.tip.remove();
    return;
  }
  state.tip.setLngLat(lngLat).setDOMContent(content);
  if (!state.tip.isOpen()) state.tip.addTo(state.map);
}

function tipOf(target) {
  if (target.kind === 'sensor') return tooltipOf(target.group);
  if (target.kind === 'area') return areaLabel(target.area);
  if (target.kind === 'feedback') return el('div', { text: target.item.properties?.category });
  const p = target.properties;
  if (p.point_count > 1) return el('div', {}, el('strong', { text: target.record.title }), el('br'),
    `${plural(p.point_count, 'feature')} here: click to zoom in`);
  const name = featureName(p);
  return name ? el('div', { text: name }) : null;
}

/** A click on the map: a sensor's or an area's panel; a collection's feature's properties in a popup; a point standing
 * for several, closer. */
function openTarget(target, lngLat) {
  if (!target) return;
  if (target.kind === 'sensor') selectSensor(groupValue(target.group).id, { fly: false });
  else if (target.kind === 'area') selectArea(target.area);
  else if (target.kind === 'feedback') showFeedbackPopup(target.item, lngLat);
  else if (target.properties.point_count > 1) state.map.easeTo({ center: lngLat, zoom: state.map.getZoom() + 2 });
  else {
    showTip(null);
    const p = target.properties;
    state.popup?.remove();
    state.popup = new maplibregl.Popup({ maxWidth: '320px', className: 'feature-popup' }).setLngLat(lngLat)
      .setDOMContent(el('div', {}, el('strong', { text: featureName(p) || target.record.title }), propertiesTable(p)))
      .addTo(state.map);
  }
}

function geometryKind(type) {
  if (!type) return 'none';
  if (type.includes('Point')) return 'points';
  if (type.includes('Line')) return 'lines';
  return 'areas';
}

/** The platform's MapLibre style: each collection's map layers (by `udp:collection`) in its colour, config.yml's or
 * the platform's palette's, as the OGC API pages draw them; and the tiles' deepest zoom. */
async function loadStyle() {
  const style = await getJSON(api(OGC, 'styles/default'));
  const layers = new Map();
  for (const layer of style.layers || []) {
    const id = layer.metadata?.['udp:collection'];
    if (id === undefined) continue;
    if (!layers.has(id)) layers.set(id, []);
    layers.get(id).push(layer);
  }
  const maxzoom = Object.values(style.sources || {})[0]?.maxzoom;
  return { layers, maxzoom };
}

function colourOfLayers(layers) {
  const paint = layers[0]?.paint || {};
  return paint['fill-color'] || paint['line-color'] || paint['circle-color'] || NO_VALUE;
}

/** The layer list from the collections. `shown` (after signing in or out) holds the layers' on/off states from
 * before, kept for the collections still there; a new one is on when it is a small polygon layer, as at the start. */
async function loadCollections(shown = new Map()) {
  const [doc, style] = await Promise.all([getJSON(api(OGC, 'collections', { f: 'json' })), loadStyle().catch((err) => {
    note(`The map's style could not be read: ${err.message}`); // the layers are listed, not drawn
    return { layers: new Map(), maxzoom: undefined };
  })]);
  state.collections = doc.collections || [];
  state.tileZoom = style.maxzoom;
  state.indicatorCollections = state.collections.filter((c) => (c.keywords || [])
    .some((k) => String(k).toLowerCase() === 'indicator'));
  const layers = state.collections.filter((c) => !NOT_LAYERS.has(c.id) && c.itemType !== 'record'
    && !state.indicatorCollections.includes(c));
  const list = $('#layer-list');
  const sensorsItem = layerItem('latest_values', 'Sensors: the latest value of each Datastream', '#17202a',
    shown.get('latest_values') ?? true);
  list.append(sensorsItem.li);
  state.layers.set('latest_values', { id: 'latest_values', ...sensorsItem, kind: 'sensors',
    mapLayers: ['sensors', 'sensors-selected'] });
  sensorsItem.input.addEventListener('change', () => {
    showLayers(state.layers.get('latest_values'));
    scheduleSync();
  });
  showLayers(state.layers.get('latest_values'));
  const feedback = state.collections.find((c) => c.id === FEEDBACK);
  if (feedback) {
    // in its colour of the platform's style, as the OGC API pages draw it; on at the start
    const colour = colourOfLayers(style.layers.get(FEEDBACK) || []);
    state.map.setPaintProperty('feedback', 'circle-color', colour);
    const item = layerItem(FEEDBACK, `${feedback.title || FEEDBACK}: published messages`, colour,
      shown.get(FEEDBACK) ?? true);
    item.swatch.classList.add('round');
    list.append(item.li);
    const record = { id: FEEDBACK, ...item, kind: 'feedback', mapLayers: ['feedback'] };
    state.layers.set(FEEDBACK, record);
    item.input.addEventListener('change', () => showLayers(record));
    showLayers(record);
  }
  for (const collection of layers) {
    const drawn = style.layers.get(collection.id) || [];
    const colour = colourOfLayers(drawn);
    const item = layerItem(collection.id, collection.title || collection.id, colour, false);
    const record = { id: collection.id, collection, style: drawn, mapLayers: null, ...item, kind: null, total: null };
    state.layers.set(collection.id, record);
    list.append(item.li);
    item.input.addEventListener('change', () => toggleLayer(record));
  }
  list.removeAttribute('aria-busy');
  const goto = $('#goto-select');
  for (const collection of state.collections) {
    if (NOT_LAYERS.has(collection.id) || collection.itemType === 'record' || !local(boxOf(collection))) continue;
    goto.append(el('option', { value: collection.id, text: collection.title || collection.id }));
  }
  // what kind of geometry each layer has and how big it is: one feature each
  await Promise.all([...state.layers.values()].filter((r) => r.kind === null).map(async (record) => {
    try {
      const page = await getJSON(api(OGC, `collections/${encodeURIComponent(record.id)}/items`, { limit: 1 }));
      record.kind = geometryKind(page.features?.[0]?.geometry?.type);
      record.total = page.numberMatched ?? null;
      record.count.textContent = record.total === null ? '' : record.total.toLocaleString();
      record.swatch.classList.toggle('outline', record.kind === 'areas' || record.kind === 'lines');
      record.swatch.classList.toggle('round', record.kind === 'points');
      const small = record.kind === 'areas' && record.total !== null && record.total <= SMALL_AREA_LAYER;
      if (shown.get(record.id) ?? small) {
        record.input.checked = true;
        toggleLayer(record);
      }
    } catch (err) {
      record.count.textContent = 'unavailable';
      console.warn(`collection ${record.id}:`, err.message);
    }
  }));
}

function layerItem(id, title, colour, checked) {
  const inputId = `layer-${id}`;
  const input = el('input', { type: 'checkbox', id: inputId, name: 'layer', value: id, checked });
  const swatch = el('span', { class: 'swatch', style: `background:${colour};border-color:${colour}`,
    'aria-hidden': 'true' });
  const count = el('span', { class: 'count' });
  const label = el('label', { for: inputId }, input, swatch, el('span', { class: 'title', text: title }), count);
  return { li: el('li', { 'data-collection': id }, label), input, swatch, count, title };
}

/** Whether a layer record is the current one (not one from before signing in or out). */
function isCurrent(record) {
  return state.layers.get(record.id) === record;
}

/** A layer's map layers shown or hidden as its box is ticked. */
function showLayers(record) {
  const visibility = record.input.checked ? 'visible' : 'none';
  for (const id of record.mapLayers || []) state.map.setLayoutProperty(id, 'visibility', visibility);
}

/** A collection switched on or off. Its tiles' source and map layers are added the first time it is on (only what
 * is shown is read); polygons and lines go under the indicator areas, points over them. */
function toggleLayer(record) {
  if (!isCurrent(record)) return;
  if (!record.mapLayers && record.input.checked) {
    const map = state.map;
    const source = `layer:${record.id}`;
    const box = boxOf(record.collection);
    map.addSource(source, {
      type: 'vector', ...(state.tileZoom !== undefined ? { maxzoom: state.tileZoom } : {}),
      // `{z}` and the others stay as they are: new URL() would escape their braces
      tiles: [`${OGC}collections/${encodeURIComponent(record.id)}/tiles/WebMercatorQuad/{z}/{y}/{x}`],
      ...(box ? { bounds: box } : {}),
    });
    record.mapLayers = record.style.map((layer) => {
      const id = `layer:${layer.id}`;
      map.addLayer({ ...layer, id, source }, layer.type === 'fill' || layer.type === 'line' ? 'choropleth-fill'
        : 'sensors');
      return id;
    });
    if (!record.style.length) record.count.textContent = 'not in the platform\'s style';
  }
  showLayers(record);
}

/** A collection's map layers and tiles taken off the map (before reading the collections again as someone else). */
function removeLayers(record) {
  if (!record.collection || !record.mapLayers) return;
  record.mapLayers.forEach((id) => state.map.removeLayer(id));
  state.map.removeSource(`layer:${record.id}`);
  record.mapLayers = null;
}

// ---------------------------------------------------------------- sensors: latest value per Datastream

/** Where a sensor is drawn, [longitude, latitude]: the mean of its place's positions. */
function positionOf(feature) {
  const positions = positionsOf(feature.geometry || feature.properties?.observedArea);
  if (!positions.length) return null;
  const lng = positions.reduce((s, c) => s + c[0], 0) / positions.length;
  const lat = positions.reduce((s, c) => s + c[1], 0) / positions.length;
  return Number.isFinite(lat) && Number.isFinite(lng) ? [lng, lat] : null;
}

function loadLatestValues(params = {}) {
  return readAll(api(OGC, 'collections/latest_values/items', { limit: 10000, ...params }));
}

/** The sensors from the latest values; `property` is the observed property to show (after signing in or out, the
 * one chosen before, when it is still there). */
async function loadSensors(property = '') {
  const features = await loadLatestValues();
  const byProperty = new Map();
  for (const feature of features) {
    const p = feature.properties || {};
    if (p.properties?.indicator !== undefined) continue; // indicator Datastreams are the tiles and the areas
    const id = idFromLink(p.selfLink) ?? Number(feature.id);
    const sensor = {
      id, name: p.name, thing: p.thing, property: p.observedProperty || 'unknown observed property',
      unit: unitText(p.unit ?? p.unitOfMeasurement?.symbol), result: p.result,
      time: endOf(p.phenomenonTime) || p.resultTime, lnglat: positionOf(feature), group: null, since: Date.now(),
    };
    state.sensors.set(id, sensor);
    if (!byProperty.has(sensor.property)) byProperty.set(sensor.property, []);
    byProperty.get(sensor.property).push(sensor);
  }
  for (const [property, sensors] of byProperty) {
    state.scales.set(property, makeScale(sensors.map((s) => numeric(s.result)).filter((v) => v !== null), VIRIDIS));
  }
  // one marker per place and observed property (a counter's two directions share one), and one per place
  // when every property is shown, coloured by its lead property: the one with the fewest Datastreams there
  // (a total before its parts), then the one more places observe
  const order = [...byProperty.entries()].sort((a, b) => b[1].length - a[1].length).map(([property]) => property);
  for (const sensor of state.sensors.values()) {
    if (!sensor.lnglat) continue;
    const place = `${sensor.lnglat[1].toFixed(5)},${sensor.lnglat[0].toFixed(5)}`;
    const key = `${place}|${sensor.property}`;
    if (!state.groups.has(key)) state.groups.set(key, markerGroup(key, sensor.lnglat, sensor.property));
    if (!state.places.has(place)) state.places.set(place, markerGroup(place, sensor.lnglat, null));
    sensor.group = state.groups.get(key);
    sensor.place = state.places.get(place);
    sensor.group.ids.push(sensor.id);
    sensor.group.lead.push(sensor.id);
    sensor.place.ids.push(sensor.id);
  }
  for (const place of state.places.values()) {
    const count = new Map();
    for (const id of place.ids) {
      const property = state.sensors.get(id).property;
      count.set(property, (count.get(property) || 0) + 1);
    }
    const lead = [...count.keys()].sort((a, b) => count.get(a) - count.get(b) || order.indexOf(a) - order.indexOf(b))[0];
    place.property = lead;
    place.lead = place.ids.filter((id) => state.sensors.get(id).property === lead);
  }
  state.map.getSource('sensors').setData({ type: 'FeatureCollection', features: [...state.markers.values()]
    .map((group) => ({ type: 'Feature', id: group.fid, geometry: { type: 'Point', coordinates: group.lnglat },
      properties: markerProperties(group) })) });
  const located = [...state.sensors.values()].filter((s) => s.lnglat).length;
  const item = state.layers.get('latest_values');
  item.count.textContent = `${located.toLocaleString()} Datastreams`;
  const select = $('#property-select');
  order.forEach((property) => {
    select.append(el('option', { value: property, text: `${property} (${byProperty.get(property).length})` }));
  });
  const things = [...new Set([...state.sensors.values()].filter((s) => s.lnglat && s.thing).map((s) => s.thing))];
  things.sort((a, b) => a.localeCompare(b));
  $('#find-list').replaceChildren(...things.map((t) => el('option', { value: t })));
  select.value = byProperty.has(property) ? property : '';
  showProperty(select.value);
}

/** A marker: of a place and an observed property (`property`), or of a place with every property (null until its
 * lead property is known). Its `fid` is its feature's id on the map. */
function markerGroup(key, lnglat, property) {
  const group = { key, lnglat, property, place: property === null, ids: [], lead: [], fid: state.markers.size };
  state.markers.set(group.fid, group);
  return group;
}

/** Forget the sensors and their markers (before reading them again as someone else). */
function clearSensors() {
  showTip(null);
  state.map.getSource('sensors').setData(EMPTY);
  state.sensors.clear();
  state.groups.clear();
  state.places.clear();
  state.markers.clear();
  state.scales.clear();
  $('#property-select').replaceChildren(el('option', { value: '', text: 'every observed property' }));
  $('#find-list').replaceChildren();
  $('#sensor-legend').replaceChildren();
}

function groupValue(group) {
  let best = null;
  let bestId = group.lead[0];
  for (const id of group.lead) {
    const v = numeric(state.sensors.get(id).result);
    if (v !== null && (best === null || v > best)) { best = v; bestId = id; }
  }
  return { value: best, id: bestId };
}

/** A marker's feature properties: what it stands for (the Datastreams, space-separated), its value and colour. */
function markerProperties(group) {
  const { value } = groupValue(group);
  return { place: group.place, property: group.property, datastreams: group.ids.join(' '), value,
    colour: colourOf(state.scales.get(group.property), value) };
}

function tooltipOf(group) {
  const first = state.sensors.get(group.ids[0]);
  const rows = group.ids.flatMap((id) => {
    const s = state.sensors.get(id);
    return [el('br'), `${s.name}: `, el('strong', { text: fmt(s.result) }), s.unit ? ` ${s.unit}` : ''];
  });
  return el('div', {}, el('strong', { text: first.thing || first.name }), rows,
    first.time ? [el('br'), el('span', { text: fmtTime(first.time) })] : '');
}

function showProperty(property) {
  state.property = property;
  // the places' markers, or the chosen property's: both are in the source, the filter picks
  state.map.setFilter('sensors', property
    ? ['all', ['!', ['get', 'place']], ['==', ['get', 'property'], property]] : ['get', 'place']);
  const selected = state.selected?.id !== undefined && state.sensors.get(state.selected.id);
  if (selected && state.selected.kind === 'sensor') {
    highlight(property ? selected.group : selected.place);
    state.selected.group = property ? selected.group : selected.place;
  }
  const container = $('#sensor-legend');
  if (property) {
    const sample = [...state.sensors.values()].find((s) => s.property === property);
    legend(container, `${property}, latest value`, state.scales.get(property), sample?.unit, true);
  } else {
    container.replaceChildren(el('p', { class: 'title',
      text: 'One marker per place, coloured by its main observed property on that property\'s own scale, from '
        + 'low (dark purple) to high (yellow); choose a property to see its legend. Hover a marker or open it '
        + 'for the values in text.' }));
  }
}

/** Markers whose values changed, drawn again. */
function refreshGroups(groups) {
  if (!groups.size) return;
  state.map.getSource('sensors').updateData({ update: [...groups].map((group) => ({ id: group.fid,
    addOrUpdateProperties: Object.entries(markerProperties(group)).map(([key, value]) => ({ key, value })) })) });
}

// ---------------------------------------------------------------- live: MQTT over WebSockets, or polling

function setLive(mode, text) {
  state.live = mode;
  const status = $('#live-status');
  status.dataset.state = mode;
  status.querySelector('.text').textContent = text;
}

function wsEndpoint(root) {
  const endpoints = root?.serverSettings?.[MQTT_UPDATES]?.endpoints || [];
  const found = endpoints.find((e) => /^wss?:\/\//i.test(e));
  if (!found) return null;
  const url = new URL(found);
  const local = ['localhost', '127.0.0.1', '[::1]', '::1'];
  if (local.includes(url.hostname) && !local.includes(location.hostname)) url.hostname = location.hostname;
  if (location.protocol === 'https:' && url.protocol === 'ws:') return null; // the browser would refuse it
  return url.href;
}

async function startLive() {
  let root = null;
  try {
    root = await getJSON(STA);
  } catch (err) {
    console.warn('SensorThings service root:', err.message);
  }
  const endpoint = wsEndpoint(root);
  if (!endpoint) {
    startPolling('no MQTT WebSocket endpoint is advertised');
    return;
  }
  let mqtt;
  try {
    ({ default: mqtt } = await import('./vendor/mqtt-5.16.0/mqtt.esm.js'));
  } catch (err) {
    startPolling(`MQTT.js did not load (${err.message})`);
    return;
  }
  const client = mqtt.connect(endpoint, {
    protocolVersion: 4, clean: true, keepalive: 30, reconnectPeriod: 5000, connectTimeout: 8000, resubscribe: false,
    clientId: `udp-cockpit-${Math.random().toString(16).slice(2, 10)}`,
  });
  state.client = client;
  client.on('connect', () => {
    stopPolling();
    state.subscribed.clear();
    state.subscribing.clear();
    setLive('live', `Live: MQTT ${new URL(endpoint).host}`);
    syncSubscriptions();
    state.feedbackLive = 'off'; // a clean session: subscribed to nothing
    followFeedback();
  });
  client.on('message', onMessage);
  client.on('offline', () => startPolling('MQTT is offline; retrying'));
  client.on('error', (err) => console.warn('MQTT:', err.message));
}

function topicOf(id) {
  return `v1.1/Datastreams(${id})/Observations`;
}

/** The Datastreams to follow live: the tiles, the areas, the open panel's, and the sensors in and around the
 * map's view (a city's thousands of sensors are not all followed at once; each subscription costs the broker). */
function wantedIds() {
  const ids = new Set([...state.tiles.keys(), ...(state.choropleth?.byDatastream.keys() || []), ...state.pinned]);
  if (state.chart) ids.add(state.chart.id);
  if (state.layers.get('latest_values')?.input.checked) {
    const view = viewBox(LIVE_PAD);
    for (const place of state.places.values()) {
      if (within([...place.lnglat, ...place.lnglat], view)) place.ids.forEach((id) => ids.add(id));
    }
  }
  return ids;
}

/** Subscribe to what is wanted and not yet followed, unsubscribe from what is no longer wanted. */
function syncSubscriptions() {
  clearTimeout(state.syncTimer);
  state.syncTimer = null;
  const client = state.client;
  if (!client || !client.connected) return;
  const wanted = wantedIds();
  const add = [...wanted].filter((id) => id !== null && !state.subscribed.has(id) && !state.subscribing.has(id));
  const drop = [...state.subscribed, ...state.subscribing.keys()].filter((id) => !wanted.has(id));
  const now = Date.now();
  if (drop.length) {
    drop.forEach((id) => {
      state.subscribed.delete(id);
      state.subscribing.delete(id);
      const sensor = state.sensors.get(id);
      if (sensor) sensor.since = now;
    });
    client.unsubscribe(drop.map(topicOf));
  }
  if (add.length) {
    // followed only once the broker acknowledges: until then a message may still pass by unseen
    const request = {};
    add.forEach((id) => state.subscribing.set(id, request));
    client.subscribe(add.map(topicOf), { qos: 0 }, (err, granted) => {
      const refused = new Set((granted || []).filter((g) => g.qos & 0x80).map((g) => g.topic));
      add.forEach((id) => {
        if (state.subscribing.get(id) !== request) return; // dropped or reconnected meanwhile
        state.subscribing.delete(id);
        if (!err && !refused.has(topicOf(id))) state.subscribed.add(id);
      });
      if (err || refused.size) console.warn('MQTT subscribe:', err ? err.message : `refused ${[...refused]}`);
    });
    // sensors not followed for a while may have moved on meanwhile: read them again, for this view only
    if (add.some((id) => now - (state.sensors.get(id)?.since ?? now) > STALE_MS)) refreshView();
  }
}

function scheduleSync() {
  clearTimeout(state.syncTimer);
  state.syncTimer = setTimeout(syncSubscriptions, 300);
}

async function refreshView() {
  try {
    await applyLatest(await loadLatestValues({ bbox: bboxParam(viewBox(LIVE_PAD)) }));
  } catch (err) {
    console.warn('latest values:', err.message);
  }
}

/** Latest values read over HTTP: what changed is shown as if it had arrived live. */
function applyLatest(features) {
  const now = Date.now();
  for (const feature of features) {
    const p = feature.properties || {};
    const id = idFromLink(p.selfLink) ?? Number(feature.id);
    const time = endOf(p.phenomenonTime) || p.resultTime;
    const known = state.sensors.get(id);
    if (!known) continue;
    known.since = now;
    // a read that left before a live message arrived must not put the older value back
    if (known.time && time && Date.parse(time) < Date.parse(known.time)) continue;
    if (known.time !== time || known.result !== p.result) applyObservation(id, p.result, time);
  }
}

/** An MQTT payload's JSON; undefined when it is not JSON (a message of someone else's on our topics). */
function parsed(payload) {
  try {
    return JSON.parse(new TextDecoder().decode(payload));
  } catch {
    return undefined;
  }
}

function onMessage(topic, payload) {
  if (topic.startsWith(`${FEEDBACK}/`)) {
    onFeedbackMessage(payload);
    return;
  }
  const match = /Datastreams\((\d+)\)\/Observations$/.exec(topic);
  if (!match) return;
  const obs = parsed(payload);
  if (obs === undefined) return;
  applyObservation(Number(match[1]), obs.result, endOf(obs.phenomenonTime) || obs.resultTime);
}

/** A new Observation of a Datastream, from MQTT or from polling: every view of it follows. The last one to
 * arrive is shown, with its own time (a replay of recorded readings sends times from the past); the chart
 * puts each reading at its time. */
function applyObservation(id, result, time) {
  const sensor = state.sensors.get(id);
  if (sensor) {
    sensor.result = result;
    sensor.time = time;
  }
  const tile = state.tiles.get(id);
  if (tile) {
    if (!tile.latest || tile.latest.time !== time) tile.previous = tile.latest;
    tile.latest = { result, time };
  }
  const area = state.choropleth?.byDatastream.get(id);
  if (area) {
    area.feature.properties.value = result;
    area.feature.properties.updated = time;
  }
  if (state.chart && state.chart.id === id) chartAdd(state.chart, time, result);
  state.dirty.add(id);
  if (!state.flushTimer) state.flushTimer = setTimeout(flush, FLUSH_MS);
}

function flush() {
  state.flushTimer = null;
  const ids = [...state.dirty];
  state.dirty.clear();
  const groups = new Set();
  let areasChanged = false;
  for (const id of ids) {
    const sensor = state.sensors.get(id);
    if (sensor?.group) groups.add(sensor.group);
    if (sensor?.place) groups.add(sensor.place);
    if (state.tiles.has(id)) renderTile(state.tiles.get(id));
    const area = state.choropleth?.byDatastream.get(id);
    if (area) {
      restyleArea(area);
      areasChanged = true;
    }
    document.querySelectorAll(`#details td[data-datastream="${id}"]`).forEach((cell) => renderValueCell(cell, id));
  }
  refreshGroups(groups);
  if (areasChanged) drawAreas(state.choropleth);
  // the pointer's popup, when it shows a sensor's or an area's values, follows them too
  if (state.tipTarget && state.tipTarget.kind !== 'feature') state.tip.setDOMContent(tipOf(state.tipTarget));
  if (state.chart?.dirty) chartRedraw(state.chart);
}

function startPolling(reason) {
  if (state.pollTimer) return;
  setLive('polling', `Updates every ${POLL_MS / 1000} s (${reason})`);
  state.pollTimer = setInterval(poll, POLL_MS);
}

function stopPolling() {
  if (state.pollTimer) clearInterval(state.pollTimer);
  state.pollTimer = null;
}

async function poll() {
  try {
    applyLatest(await loadLatestValues());
    if (state.tiles.size) await loadTiles(true);
    if (state.choropleth) await showIndicator(state.choropleth.collection.id, true);
    if (state.feedback) await readFeedback();
  } catch (err) {
    setLive('offline', `Updates failed: ${err.message}`);
  }
}

// ---------------------------------------------------------------- city at a glance: indicator tiles

function indicatorQuery(area) {
  return api(STA, 'Datastreams', {
    $filter: `properties/area eq ${quote(area)}`,
    $expand: 'Observations($orderby=phenomenonTime desc;$top=2),ObservedProperty',
    $top: 1000,
  });
}

/** One Datastream per indicator: where the read role also sees the full one (every sensor, internal ones
 * too: properties.scope 'full'), that one instead of the public one. */
function preferFull(streams) {
  const full = new Set(streams.filter((ds) => ds.properties?.scope === 'full').map((ds) => ds.properties.indicator));
  return streams.filter((ds) => ds.properties?.scope === 'full' || !full.has(ds.properties?.indicator));
}

function shortName(ds, area) {
  const name = ds.name || ds.ObservedProperty?.name || `Datastream ${ds['@iot.id']}`;
  for (const sep of [' — ', ' - ', ': ']) {
    if (area && name.endsWith(`${sep}${area}`)) return name.slice(0, -(sep.length + area.length));
  }
  return name;
}

function trendOf(latest, previous) {
  const a = numeric(latest?.result);
  const b = numeric(previous?.result);
  if (a === null || b === null) return { trend: 'none', arrow: '', text: 'no earlier value' };
  const diff = a - b;
  if (Math.abs(diff) < 1e-12) return { trend: 'flat', arrow: '→', text: `unchanged from ${fmt(b)}` };
  return diff > 0
    ? { trend: 'up', arrow: '▲', text: `up ${fmt(diff)} from ${fmt(b)}` }
    : { trend: 'down', arrow: '▼', text: `down ${fmt(-diff)} from ${fmt(b)}` };
}

function observationOf(o) {
  return o ? { result: o.result, time: endOf(o.phenomenonTime) || o.resultTime } : null;
}

async function loadTiles(quiet = false) {
  let doc;
  try {
    doc = await getJSON(indicatorQuery('city'));
  } catch (err) {
    if (!quiet) showTilesEmpty(`The indicators could not be read: ${err.message}`);
    return;
  }
  const list = $('#tiles');
  list.removeAttribute('aria-busy');
  const streams = preferFull(doc.value || []);
  if (!streams.length) {
    showTilesEmpty('No indicators are published yet. The platform computes them from the indicators: section of '
      + 'its config.yml; they appear here as soon as there are any.');
    return;
  }
  $('#tiles-empty').hidden = true;
  const seen = new Set();
  for (const ds of streams) {
    const id = ds['@iot.id'];
    seen.add(id);
    const obs = ds.Observations || [];
    let tile = state.tiles.get(id);
    if (!tile) {
      tile = { id, ds, node: null };
      state.tiles.set(id, tile);
    }
    tile.ds = ds;
    tile.latest = observationOf(obs[0]);
    tile.previous = observationOf(obs[1]);
    renderTile(tile);
  }
  for (const id of [...state.tiles.keys()]) {
    if (!seen.has(id)) { state.tiles.get(id).node?.remove(); state.tiles.delete(id); }
  }
  syncSubscriptions();
}

function showTilesEmpty(text) {
  $('#tiles').removeAttribute('aria-busy');
  const empty = $('#tiles-empty');
  empty.textContent = text;
  empty.hidden = false;
}

function renderTile(tile) {
  const { ds } = tile;
  const unit = unitText(ds.unitOfMeasurement?.symbol);
  const name = shortName(ds, 'city');
  const trend = trendOf(tile.latest, tile.previous);
  const value = tile.latest ? tile.latest.result : null;
  const headingId = `tile-${tile.id}`;
  const node = el('li', { class: 'tile', 'data-datastream': tile.id, 'data-indicator': ds.properties?.indicator,
    'aria-labelledby': headingId },
  el('h3', { class: 'name', id: headingId },
    el('button', { type: 'button', class: 'ds-button', title: ds.description || '',
      onclick: () => selectIndicator(tile.id, name) }, name)),
  el('div', { class: 'line' },
    el('p', { class: 'value' },
      el('span', { class: 'number', 'data-value': value === null ? '' : String(value), text: fmt(value) }),
      unit ? el('span', { class: 'unit', text: unit }) : null),
    el('p', { class: 'trend', 'data-trend': trend.trend },
      trend.arrow ? el('span', { 'aria-hidden': 'true', text: `${trend.arrow} ` }) : null, trend.text)),
  el('p', { class: 'when' }, tile.latest?.time ? 'as of ' : 'no value yet', timeEl(tile.latest?.time)));
  if (tile.node?.isConnected) tile.node.replaceWith(node);
  else $('#tiles').append(node);
  tile.node = node;
}

// ---------------------------------------------------------------- districts: indicator choropleth

/** The indicator choice and the choropleth; `keep` (after signing in or out) is the choice from before, kept when
 * it is still offered ('' for none); without it, the first indicator. */
function initIndicators(keep) {
  const select = $('#indicator-select');
  const empty = $('#areas-empty');
  select.replaceChildren(el('option', { value: '', text: 'none' }));
  if (!state.indicatorCollections.length) {
    empty.textContent = 'No indicator collections yet: each indicator the platform computes is a collection of '
      + 'areas with their current value, shown here as a map.';
    empty.hidden = false;
    select.disabled = true;
    return state.choropleth ? showIndicator('') : undefined;
  }
  empty.hidden = true;
  for (const c of state.indicatorCollections) select.append(el('option', { value: c.id, text: c.title || c.id }));
  select.disabled = false;
  const offered = keep === '' || state.indicatorCollections.some((c) => c.id === keep);
  select.value = keep !== undefined && offered ? keep : state.indicatorCollections[0].id;
  return showIndicator(select.value);
}

async function showIndicator(id, quiet = false) {
  const previous = state.choropleth;
  if (!id) {
    state.map.getSource('choropleth').setData(EMPTY);
    state.choropleth = null;
    $('#choropleth-legend').replaceChildren();
    $('#area-list').hidden = true;
    return;
  }
  const collection = state.collections.find((c) => c.id === id);
  let features;
  try {
    features = await readAll(api(OGC, `collections/${encodeURIComponent(id)}/items`, { limit: PAGE }), FEATURE_CAP);
  } catch (err) {
    if (!quiet) note(`${collection?.title || id}: ${err.message}`);
    return;
  }
  if ($('#indicator-select').value !== id) return; // another one was chosen meanwhile
  const values = features.map((f) => numeric(f.properties?.value)).filter((v) => v !== null);
  const scale = quiet && previous?.collection.id === id ? previous.scale : makeScale(values, HEAT);
  const unit = unitText(features.find((f) => f.properties?.unit)?.properties.unit || '');
  const choropleth = { collection, scale, unit, byDatastream: new Map(), areas: [] };
  // an area is a feature with a place; its index is its feature's id on the map
  for (const feature of features.filter((f) => f.geometry)) {
    const area = { feature, choropleth, index: choropleth.areas.length };
    choropleth.areas.push(area);
    const dsId = idFromLink(feature.properties?.datastream);
    if (dsId !== null) choropleth.byDatastream.set(dsId, area);
  }
  state.choropleth = choropleth; // in place of the one shown now: another read may have finished meanwhile
  drawAreas(choropleth);
  if (!quiet) {
    legend($('#choropleth-legend'), `${collection?.title || id}${unit ? ` (${unit})` : ''}`, scale, unit, false);
  }
  renderAreaList(choropleth);
  syncSubscriptions();
}

/** The areas on the map, each in its value's colour on the indicator's scale (a feature property, `colour`). */
function drawAreas(choropleth) {
  state.map.getSource('choropleth').setData({ type: 'FeatureCollection', features: choropleth.areas.map((area) => ({
    type: 'Feature', id: area.index, geometry: area.feature.geometry,
    properties: { ...area.feature.properties,
      colour: colourOf(choropleth.scale, numeric(area.feature.properties?.value)) } })) });
}

function areaLabel(area) {
  const p = area.feature.properties || {};
  const unit = area.choropleth.unit ? ` ${area.choropleth.unit}` : '';
  return el('div', {}, el('strong', { text: String(p.area ?? '') }), el('br'), `${fmt(p.value)}${unit}`,
    p.sensors !== undefined ? [el('br'), plural(p.sensors, 'sensor')] : '');
}

/** The chosen area outlined (by its name, so that it stays outlined when the areas are read again), or none. */
function highlightArea(area) {
  const name = area?.feature.properties?.area;
  state.map.setFilter('choropleth-selected', area ? ['==', ['get', 'area'], name ?? ''] : NOTHING);
}

/** An area whose value changed: its list item now; the map once for all of them (`flush`). */
function restyleArea(area) {
  const item = area.listItem;
  if (item) item.textContent = `${area.feature.properties?.area}: ${fmt(area.feature.properties?.value)}`;
}

function renderAreaList(choropleth) {
  const list = $('#area-list');
  const sorted = [...choropleth.areas].sort((a, b) => String(a.feature.properties?.area)
    .localeCompare(String(b.feature.properties?.area)));
  list.replaceChildren(...sorted.map((area) => {
    const button = el('button', { type: 'button', class: 'ds-button', onclick: () => selectArea(area, true) },
      `${area.feature.properties?.area}: ${fmt(area.feature.properties?.value)}`);
    area.listItem = button;
    return el('li', {}, button);
  }));
  list.setAttribute('aria-label', `${choropleth.collection?.title || 'Indicator'} per area`);
  list.hidden = !sorted.length;
}

// ---------------------------------------------------------------- details: a sensor, an area, an indicator

function openDetails(title) {
  const panel = $('#details');
  $('#details-heading').textContent = title;
  const body = $('#details-body');
  body.replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
  state.pinned.clear();
  panel.hidden = false;
  panel.focus({ preventScroll: true });
  if (matchMedia('(min-width: 701px)').matches) panel.scrollIntoView({ block: 'nearest' });
  destroyChart();
  return body;
}

function closeDetails({ focus = true } = {}) {
  $('#details').hidden = true;
  highlightArea(null);
  destroyChart();
  state.pinned.clear();
  scheduleSync();
  highlight(null);
  state.selected = null;
  if (focus) state.map.getCanvas().focus(); // the map's keyboard way in (arrows pan, +/- zoom)
}

/** The chosen marker drawn larger, outlined and on top, or none. */
function highlight(group) {
  state.map.setFilter('sensors-selected', group ? ['==', ['id'], group.fid] : NOTHING);
}

function renderValueCell(cell, id) {
  const sensor = state.sensors.get(id);
  if (!sensor) return;
  cell.replaceChildren(el('span', { class: 'value', 'data-value': sensor.result ?? '', text: fmt(sensor.result) }),
    sensor.unit ? ` ${sensor.unit}` : '');
  const timeCell = cell.nextElementSibling;
  if (timeCell) timeCell.replaceChildren(timeEl(sensor.time));
}

/** A Datastream read for a panel, known as a sensor without a place (charts take its name and unit from it). */
function knowStream(ds, thing, property) {
  if (state.sensors.has(ds['@iot.id'])) return;
  state.sensors.set(ds['@iot.id'], { id: ds['@iot.id'], name: ds.name, thing, result: null, time: null, property,
    unit: unitText(ds.unitOfMeasurement?.symbol), lnglat: null, group: null });
}

async function selectSensor(id, { fly = true } = {}) {
  const sensor = state.sensors.get(id);
  if (!sensor) return;
  highlightArea(null);
  if (sensor.group && state.property && sensor.group.property !== state.property) {
    $('#property-select').value = '';
    showProperty('');
  }
  const shown = state.property ? sensor.group : sensor.place;
  highlight(shown);
  state.selected = { kind: 'sensor', id, group: shown };
  if (fly && sensor.lnglat) state.map.easeTo({ center: sensor.lnglat, zoom: Math.max(state.map.getZoom(), 14) });
  const body = openDetails(sensor.thing || sensor.name);
  let thing;
  try {
    thing = await getJSON(api(STA, `Datastreams(${id})/Thing`, {
      $select: 'id,name,description',
      $expand: 'Datastreams($select=id,name,description,unitOfMeasurement;$expand=ObservedProperty($select=name))',
    }));
  } catch (err) {
    body.replaceChildren(el('p', { text: `The Thing could not be read: ${err.message}` }));
    return;
  }
  if (state.selected?.id !== id) return;
  const streams = thing.Datastreams || [];
  streams.forEach((ds) => knowStream(ds, thing.name, ds.ObservedProperty?.name));
  state.pinned = new Set(streams.map((ds) => ds['@iot.id']));
  syncSubscriptions();
  const rows = streams.map((ds) => {
    const dsId = ds['@iot.id'];
    const valueCell = el('td', { class: 'num', 'data-datastream': dsId });
    const row = el('tr', { 'data-row': dsId },
      el('th', { scope: 'row' }, el('button', { type: 'button', class: 'ds-button', title: ds.description || '',
        onclick: () => chartSensor(dsId, ds.name, body) }, ds.name)),
      valueCell, el('td', {}));
    renderValueCell(valueCell, dsId);
    return row;
  });
  body.replaceChildren(
    thing.description ? el('p', { class: 'muted small', text: thing.description }) : '',
    el('table', {}, el('caption', { text: 'Datastreams of this Thing: latest values, live' }),
      el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Datastream' }),
        el('th', { scope: 'col', class: 'num', text: 'Latest' }), el('th', { scope: 'col', text: 'Time' }))),
      el('tbody', {}, rows)),
    el('div', { id: 'chart-area' }),
  );
  await chartSensor(id, sensor.name, body);
}

async function chartSensor(id, name, body) {
  body.querySelectorAll('tr[data-row]').forEach((tr) => {
    if (Number(tr.dataset.row) === id) tr.setAttribute('aria-current', 'true');
    else tr.removeAttribute('aria-current');
  });
  const since = new Date(Date.now() - DAY_MS).toISOString();
  let series = await observations(id, {
    $filter: `phenomenonTime ge ${since}`, $orderby: 'phenomenonTime', $top: 10000,
  });
  let span = 'the last 24 hours';
  if (series && series.xs.length < 2) {
    series = await observations(id, { $orderby: 'phenomenonTime desc', $top: 500 }, true);
    span = series?.xs.length ? `its last ${plural(series.xs.length, 'reading')} (none in the last 24 hours)` : span;
  }
  const sensor = state.sensors.get(id);
  showChart(id, `${name}: ${span}`, series, sensor?.unit || '');
}

async function observations(id, params, reverse = false) {
  try {
    const doc = await getJSON(api(STA, `Datastreams(${id})/Observations`, {
      ...params, $resultFormat: 'dataArray', $select: 'phenomenonTime,result' }));
    const block = doc.value?.[0];
    const rows = block?.dataArray || [];
    const t = block?.components?.indexOf('phenomenonTime') ?? 0;
    const r = block?.components?.indexOf('result') ?? 1;
    if (reverse) rows.reverse();
    const xs = [];
    const ys = [];
    for (const row of rows) {
      const when = Date.parse(endOf(row[t]));
      if (Number.isNaN(when)) continue;
      xs.push(when / 1000);
      ys.push(numeric(row[r]));
    }
    return { xs, ys };
  } catch (err) {
    note(`Observations of Datastream ${id}: ${err.message}`);
    return null;
  }
}

function destroyChart() {
  if (state.chart) {
    state.chart.observer?.disconnect();
    state.chart.plot?.destroy();
  }
  state.chart = null;
}

function showChart(id, title, series, unit) {
  destroyChart();
  const area = $('#chart-area');
  if (!area) return;
  const box = el('div', { class: 'chart', role: 'img', 'data-datastream': id, 'data-points': '0' });
  const summary = el('p', { class: 'chart-summary' });
  const link = el('p', { class: 'small' }, el('a', { href: new URL(`v1.1/Datastreams(${id})`, BASE).href,
    text: 'This Datastream in the SensorThings API' }));
  area.replaceChildren(el('h3', { text: title }), box, summary, link);
  const chart = { id, box, summary, unit, title, xs: series?.xs || [], ys: series?.ys || [], plot: null,
    dirty: false, observer: null };
  state.chart = chart;
  if (!chart.xs.length) {
    summary.textContent = series ? 'No readings yet.' : 'The readings could not be read.';
    box.setAttribute('aria-label', `${title}: no readings`);
    return;
  }
  const width = Math.max(260, box.clientWidth || area.clientWidth || 320);
  chart.plot = new uPlot({
    width, height: 190,
    scales: {
      // one reading alone: an hour either side of it, not uPlot's years
      x: { time: true, range: (u, min, max) => (min === max ? [min - 3600, max + 3600] : [min, max]) },
    },
    series: [
      {},
      { label: unit || 'value', stroke: '#1f3a5f', width: 1.6, fill: 'rgba(31,58,95,0.08)', spanGaps: true,
        points: { show: chart.xs.length < 80, size: 5 }, value: (u, v) => (v === null ? '–' : fmt(v)) },
    ],
    axes: [{ stroke: '#4a5563' }, { stroke: '#4a5563', size: 54 }],
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
  }, [chart.xs, chart.ys], box);
  chart.observer = new ResizeObserver(() => {
    const w = Math.max(260, box.clientWidth);
    if (chart.plot && Math.abs(chart.plot.width - w) > 4) chart.plot.setSize({ width: w, height: 190 });
  });
  chart.observer.observe(box);
  describeChart(chart);
}

function describeChart(chart) {
  const values = chart.ys.filter((v) => v !== null);
  const n = chart.xs.length;
  const u = chart.unit ? ` ${chart.unit}` : '';
  const from = fmtTime(new Date(chart.xs[0] * 1000).toISOString());
  const to = fmtTime(new Date(chart.xs[n - 1] * 1000).toISOString());
  const text = values.length
    ? `${plural(n, 'reading')} from ${from} to ${to}; lowest ${fmt(Math.min(...values))}${u}, highest `
      + `${fmt(Math.max(...values))}${u}, latest ${fmt(chart.ys[n - 1])}${u}.`
    : `${plural(n, 'reading')} from ${from} to ${to}, none numeric.`;
  chart.summary.textContent = text;
  chart.box.setAttribute('aria-label', `Chart of ${chart.title}. ${text}`);
  chart.box.setAttribute('data-points', String(n));
}

function chartAdd(chart, time, result) {
  const when = Date.parse(time);
  if (Number.isNaN(when)) return;
  const x = when / 1000;
  let i = chart.xs.length;
  while (i > 0 && chart.xs[i - 1] > x) i -= 1;
  if (i > 0 && chart.xs[i - 1] === x) chart.ys[i - 1] = numeric(result);
  else {
    chart.xs.splice(i, 0, x);
    chart.ys.splice(i, 0, numeric(result));
  }
  chart.dirty = true;
}

function chartRedraw(chart) {
  chart.dirty = false;
  if (!chart.plot) {
    if (chart.xs.length) {
      const series = { xs: chart.xs, ys: chart.ys };
      showChart(chart.id, chart.title, series, chart.unit);
    }
    return;
  }
  chart.plot.setData([chart.xs, chart.ys]);
  describeChart(chart);
}

async function selectArea(area, fly = false) {
  const p = area.feature.properties || {};
  highlight(null);
  state.selected = { kind: 'area', area };
  highlightArea(area);
  const bounds = boundsOf(area.feature.geometry);
  if (fly && !within(boxOfBounds(bounds), viewBox())) fitBox(boxOfBounds(bounds, 1), { maxZoom: 11 });
  const body = openDetails(String(p.area));
  let doc;
  try {
    doc = await getJSON(indicatorQuery(p.area));
  } catch (err) {
    body.replaceChildren(el('p', { text: `The indicators could not be read: ${err.message}` }));
    return;
  }
  if (state.selected?.area !== area) return;
  const streams = preferFull(doc.value || []);
  const current = idFromLink(p.datastream);
  const rows = streams.map((ds) => {
    const id = ds['@iot.id'];
    const obs = ds.Observations || [];
    const latest = observationOf(obs[0]);
    const trend = trendOf(latest, observationOf(obs[1]));
    const unit = unitText(ds.unitOfMeasurement?.symbol);
    const name = shortName(ds, p.area);
    return el('tr', { 'data-row': id, 'aria-current': id === current ? 'true' : null },
      el('th', { scope: 'row' }, el('button', { type: 'button', class: 'ds-button', title: ds.description || '',
        onclick: () => chartIndicator(id, name, body, unit) }, name)),
      el('td', { class: 'num', 'data-indicator-value': id },
        el('span', { 'data-value': latest?.result ?? '', text: fmt(latest?.result) }), unit ? ` ${unit}` : ''),
      el('td', { 'data-trend': trend.trend }, trend.arrow ? el('span', { 'aria-hidden': 'true',
        text: `${trend.arrow} ` }) : null, trend.text));
  });
  const facts = [];
  if (p.sensors !== undefined) facts.push(plural(p.sensors, 'sensor'));
  if (p.aggregate) facts.push(`${p.aggregate} over ${p.window || 'the window'}`);
  if (p.updated) facts.push(`updated ${fmtTime(p.updated)}`);
  body.replaceChildren(
    facts.length ? el('p', { class: 'muted small', text: `${area.choropleth.collection?.title || ''}: ${facts.join(', ')}` }) : '',
    streams.length
      ? el('table', {}, el('caption', { text: 'Indicators of this area' }),
        el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Indicator' }),
          el('th', { scope: 'col', class: 'num', text: 'Value' }), el('th', { scope: 'col', text: 'Trend' }))),
        el('tbody', {}, rows))
      : el('p', { class: 'muted', text: 'No indicator Datastreams for this area.' }),
    el('div', { id: 'chart-area' }),
  );
  const chosen = streams.find((ds) => ds['@iot.id'] === current) || streams[0];
  if (chosen) {
    await chartIndicator(chosen['@iot.id'], shortName(chosen, p.area), body,
      unitText(chosen.unitOfMeasurement?.symbol));
  }
}

async function chartIndicator(id, name, body, unit) {
  body.querySelectorAll('tr[data-row]').forEach((tr) => {
    if (Number(tr.dataset.row) === id) tr.setAttribute('aria-current', 'true');
    else tr.removeAttribute('aria-current');
  });
  state.pinned.add(id);
  syncSubscriptions();
  const series = await observations(id, { $orderby: 'phenomenonTime desc', $top: 1000 }, true);
  showChart(id, `${name}: history`, series, unit);
}

async function selectIndicator(id, name) {
  const tile = state.tiles.get(id);
  highlight(null);
  highlightArea(null);
  state.selected = { kind: 'indicator', id };
  const body = openDetails(name);
  const unit = unitText(tile?.ds.unitOfMeasurement?.symbol);
  body.replaceChildren(
    tile?.ds.description ? el('p', { class: 'muted small', text: tile.ds.description }) : '',
    el('div', { id: 'chart-area' }),
  );
  await chartIndicator(id, name, body, unit);
}

// ---------------------------------------------------------------- the Data page: the catalogue (OGC API Records)

const KIND_LABELS = { collection: 'Map layer', sensorthings: 'Sensor data', indicator: 'Indicator',
  'observed-property': 'Observed property', sensors: 'Sensors' };
const LINK_CAP = 6; // API links listed per dataset; the rest (MQTT topics, mostly) are counted

async function searchCatalogue() {
  const status = $('#data-status');
  const list = $('#data-results');
  const q = $('#data-q').value.trim();
  const params = { f: 'json', type: 'dataset', limit: CATALOGUE_LIMIT };
  if (q) params.q = q;
  if ($('#data-in-view').checked) {
    params.bbox = bboxParam(viewBox());
  }
  const asked = api(OGC, 'collections/catalogue/items', params);
  state.catalogueQuery = asked;
  status.textContent = 'Searching…';
  list.setAttribute('aria-busy', 'true');
  let doc;
  try {
    doc = await getJSON(asked);
  } catch (err) {
    if (state.catalogueQuery !== asked) return;
    status.textContent = `The catalogue could not be searched: ${err.message}`;
    list.replaceChildren();
    list.removeAttribute('aria-busy');
    return;
  }
  if (state.catalogueQuery !== asked) return; // a newer search started meanwhile
  const records = doc.features || [];
  const matched = doc.numberMatched ?? records.length;
  if (!records.length) status.textContent = q ? `No dataset matches “${q}”.` : 'The catalogue holds no datasets yet.';
  else if (matched > records.length) status.textContent = `${plural(matched, 'dataset')}, the first ${records.length} shown`;
  else status.textContent = plural(matched, 'dataset');
  list.replaceChildren(...records.map(renderRecord));
  list.removeAttribute('aria-busy');
}

/** The map view of a record's extent, unless it is missing or spans most of the world. */
function fitRecord(record) {
  if (!record.geometry) return;
  const bounds = boundsOf(record.geometry);
  if (bounds && local(boxOfBounds(bounds))) fitBox(boxOfBounds(bounds), { maxZoom: 15 });
}

/** A layer of the layer list switched on, as ticking its box does. */
function switchOn(id) {
  const layer = state.layers.get(id);
  if (layer?.input && !layer.input.checked) {
    layer.input.checked = true;
    layer.input.dispatchEvent(new Event('change'));
  }
}

function showOnMap(record) {
  switchOn(record.id);
  fitRecord(record);
}

function colourBy(record) {
  const select = $('#indicator-select');
  select.value = record.id;
  showIndicator(record.id);
  fitRecord(record);
}

function showObserved(name, record) {
  const select = $('#property-select');
  if ([...select.options].some((o) => o.value === name)) {
    select.value = name;
    showProperty(name);
  }
  switchOn('latest_values');
  fitRecord(record);
}

/** The details panel for an observed property: its Datastreams, each charted on demand, the first at once. */
async function chartProperty(id, name) {
  highlight(null);
  highlightArea(null);
  state.selected = { kind: 'property', id };
  const body = openDetails(name);
  let doc;
  try {
    doc = await getJSON(api(STA, `ObservedProperties(${id})/Datastreams`, {
      $select: 'id,name,description,unitOfMeasurement', $expand: 'Thing($select=name)', $orderby: 'id', $top: 200,
    }));
  } catch (err) {
    body.replaceChildren(el('p', { text: `The Datastreams could not be read: ${err.message}` }));
    return;
  }
  if (state.selected?.kind !== 'property' || state.selected.id !== id) return;
  const streams = doc.value || [];
  if (!streams.length) {
    body.replaceChildren(el('p', { text: 'No Datastream observes this yet.' }));
    return;
  }
  const chart = (ds) => {
    const dsId = ds['@iot.id'];
    state.pinned = new Set([dsId]); // the charted one follows live
    syncSubscriptions();
    return chartSensor(dsId, ds.Thing?.name ? `${ds.Thing.name}: ${ds.name}` : ds.name, body);
  };
  streams.forEach((ds) => knowStream(ds, ds.Thing?.name, name));
  const rows = streams.map((ds) => el('tr', { 'data-row': ds['@iot.id'] },
    el('th', { scope: 'row' }, el('button', { type: 'button', class: 'ds-button', title: ds.description || '',
      onclick: () => chart(ds) }, ds.name)),
    el('td', { text: ds.Thing?.name || '' })));
  body.replaceChildren(
    el('table', {}, el('caption', { text: `Datastreams observing ${name}${doc['@iot.nextLink'] ? ' (the first 200)' : ''}` }),
      el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Datastream' }), el('th', { scope: 'col', text: 'Thing' }))),
      el('tbody', {}, rows)),
    el('div', { id: 'chart-area' }),
  );
  await chart(streams[0]);
}

function apiLinks(record) {
  const links = (record.links || []).filter((l) => l.rel !== 'collection' && l.rel !== 'license');
  const shown = links.slice(0, LINK_CAP);
  const items = shown.map((l) => {
    const title = l.title || l.rel;
    const web = /^https?:/.test(l.href);
    return el('li', {}, web ? el('a', { href: sameOrigin(l.href), text: title }) : el('span', { text: title }),
      el('span', { class: 'muted', text: ` · ${l.type || l.rel}` }), web ? '' : el('code', { text: ` ${l.href}` }));
  });
  if (links.length > shown.length) {
    items.push(el('li', { class: 'muted', text: `and ${links.length - shown.length} more (MQTT topics, in the record)` }));
  }
  return el('details', { class: 'api-links' }, el('summary', { text: 'API links' }), el('ul', {}, items));
}

function renderRecord(record) {
  const p = record.properties || {};
  const kind = p.recordKind || '';
  const actions = [];
  const button = (text, onclick) => el('button', { type: 'button', class: 'linklike-button', onclick }, text);
  if (kind === 'indicator') actions.push(button('Colour the areas', () => colourBy(record)));
  else if (kind === 'observed-property') {
    const id = Number(String(record.id).replace('observed-property-', ''));
    actions.push(button('Show on the map', () => showObserved(p.title, record)),
      button('Chart', () => chartProperty(id, p.title)));
  } else if (kind === 'sensors') actions.push(button('Show on the map', () => showObserved('', record)));
  else if (state.layers.has(record.id)) actions.push(button('Show on the map', () => showOnMap(record)));
  else if (record.geometry) actions.push(button('Zoom to', () => fitRecord(record)));
  const facts = [KIND_LABELS[kind] || kind];
  const themes = (p.themes || []).flatMap((t) => t.concepts || []).map((c) => c.title || c.id);
  if (themes.length) facts.push(themes.join(', '));
  const interval = record.time?.interval;
  if (interval) facts.push(`${interval[0] === '..' ? '…' : fmtTime(interval[0])} – ${interval[1] === '..' ? '…' : fmtTime(interval[1])}`);
  const licence = (record.links || []).find((l) => l.rel === 'license');
  return el('li', { 'data-record': record.id, 'data-kind': kind },
    el('h3', { text: p.title || record.id }),
    el('p', { class: 'muted small' }, facts.join(' · '),
      licence ? [' · ', el('a', { href: licence.href, rel: 'license', text: licence.title || 'licence' })] : ''),
    p.description && p.description !== p.title ? el('p', { class: 'small', text: p.description }) : '',
    actions.length ? el('div', { class: 'record-actions' }, actions) : '',
    apiLinks(record));
}

// ---------------------------------------------------------------- citizens' feedback: tell the city

/** The feedback, when the platform takes it: the categories from the collection's queryables (a JSON Schema enum:
 * what the server accepts, said where any client looks for it), then the items, as the signed-in user sees them. */
async function loadFeedback() {
  const collection = state.collections.find((c) => c.id === FEEDBACK);
  cancelFeedback();
  state.feedback = null;
  $('#feedback').hidden = !collection;
  if (!collection) {
    renderFeedback();
    return;
  }
  let categories;
  try {
    const queryables = await getJSON(api(OGC, `collections/${FEEDBACK}/queryables`, { f: 'json' }));
    categories = queryables.properties?.category?.enum || [];
  } catch (err) {
    note(`${collection.title || FEEDBACK}: ${err.message}`);
    $('#feedback').hidden = true;
    return;
  }
  const fb = { collection, categories, items: new Map(), moderator: false, picking: false, place: null,
    listed: new Map(), queued: new Map() };
  state.feedback = fb;
  $('#feedback-heading').textContent = collection.title || 'Tell the city';
  $('#feedback-start').textContent = collection.title || 'Tell the city';
  $('#feedback-category').replaceChildren(el('option', { value: '', text: 'choose a category…' }),
    ...categories.map((c) => el('option', { value: c, text: c })));
  await readFeedback();
  followFeedback();
}

/** Every item the signed-in user may see, read again, and whether they may moderate (the platform's /me: the
 * queue is shown to those; the server checks each change itself). */
async function readFeedback() {
  const fb = state.feedback;
  if (!fb) return;
  let features;
  let me;
  try {
    [features, me] = await Promise.all([readAll(api(OGC, `collections/${FEEDBACK}/items`, { limit: PAGE })),
      state.auth ? getJSON(new URL('../me', location.href).href) : null]);
  } catch (err) {
    note(`${fb.collection.title || FEEDBACK}: ${err.message}`);
    return;
  }
  if (state.feedback !== fb) return; // signed in or out meanwhile
  fb.items = new Map(features.map((f) => [String(f.id), f]));
  fb.moderator = Boolean(me?.accounts && me.may?.moderate);
  renderFeedback();
}

function scheduleFeedbackRead() {
  clearTimeout(state.feedbackTimer);
  state.feedbackTimer = setTimeout(readFeedback, 300);
}

/** Follow `feedback/#` (once per connection): each change to an item is announced there. */
function followFeedback() {
  const client = state.client;
  if (!state.feedback || !client?.connected || state.feedbackLive !== 'off') return;
  state.feedbackLive = 'asking';
  client.subscribe(`${FEEDBACK}/#`, { qos: 0 }, (err, granted) => {
    const refused = err || (granted || []).some((g) => g.qos & 0x80);
    state.feedbackLive = refused ? 'off' : 'on';
    if (refused) console.warn('MQTT subscribe:', err ? err.message : `refused ${FEEDBACK}/#`);
  });
}

/** An item changed: announced as the public may see it (a Feature), or only its id and status (what the public may
 * not see, or a deletion). A signed-in user may see more than the announcement holds: their view is read again. */
function onFeedbackMessage(payload) {
  const fb = state.feedback;
  if (!fb) return;
  const doc = parsed(payload);
  if (doc === undefined) return;
  if (state.auth) {
    scheduleFeedbackRead();
    return;
  }
  const id = String(doc?.id);
  if (doc?.type === 'Feature' && FEEDBACK_PUBLIC.has(doc.properties?.status)) fb.items.set(id, doc);
  else fb.items.delete(id);
  renderFeedback();
}

function newestFirst(a, b) {
  return String(b.properties?.created).localeCompare(String(a.properties?.created));
}

/** The map's points, the public list and, for a moderator, the queue, from the items. */
function renderFeedback() {
  const fb = state.feedback;
  const items = fb ? [...fb.items.values()] : [];
  const shown = items.filter((f) => FEEDBACK_PUBLIC.has(f.properties?.status)).sort(newestFirst);
  state.map.getSource(FEEDBACK)?.setData({ type: 'FeatureCollection', features: shown.filter((f) => f.geometry)
    .map((f) => ({ type: 'Feature', id: Number(f.id), geometry: f.geometry,
      properties: { status: f.properties.status } })) });
  const record = state.layers.get(FEEDBACK);
  if (record) record.count.textContent = shown.length.toLocaleString();
  if (!fb) {
    $('#feedback-list').replaceChildren();
    $('#moderation-list').replaceChildren();
    $('#moderation').hidden = true;
    return;
  }
  renderKeyed($('#feedback-list'), fb.listed, shown.slice(0, FEEDBACK_LISTED), listItem);
  $('#feedback-empty').hidden = shown.length > 0;
  $('#moderation').hidden = !fb.moderator;
  if (!fb.moderator) {
    renderKeyed($('#moderation-list'), fb.queued, [], queueItem);
    return;
  }
  // the oldest waiting first (a queue), then the published ones still to be answered
  const waiting = items.filter((f) => f.properties?.status === 'received').sort((a, b) => newestFirst(b, a));
  const open = items.filter((f) => ['published', 'in progress'].includes(f.properties?.status)).sort(newestFirst);
  renderKeyed($('#moderation-list'), fb.queued, [...waiting, ...open], queueItem);
  $('#moderation-empty').hidden = waiting.length + open.length > 0;
}

/** A list's items, each made again only when it changed and the list put together again only when its order did:
 * a moderator's half-written answer (and its focus) survives the news of other items. */
function renderKeyed(list, made, features, make) {
  const nodes = features.map((f) => {
    const key = String(f.id);
    const version = JSON.stringify([f.properties, f.geometry]);
    let entry = made.get(key);
    if (!entry || entry.version !== version) {
      entry = { version, node: make(f) };
      made.set(key, entry);
    }
    return entry.node;
  });
  const keep = new Set(features.map((f) => String(f.id)));
  for (const key of [...made.keys()]) if (!keep.has(key)) made.delete(key);
  if (nodes.length !== list.children.length || nodes.some((node, i) => list.children[i] !== node)) {
    list.replaceChildren(...nodes);
  }
}

/** What an item says, as text (a citizen's words are never read as markup): its category and status, the text, its
 * area and time, and the city's answer. */
function feedbackFacts(feature) {
  const p = feature.properties || {};
  return [
    el('p', { class: 'feedback-head' }, el('strong', { class: 'category', text: p.category }), ' · ',
      el('span', { class: 'status', 'data-status': p.status, text: FEEDBACK_STATUS[p.status] || p.status })),
    el('p', { class: 'feedback-text', text: p.text }),
    el('p', { class: 'muted small' }, p.area ? `${p.area} · ` : '', 'sent ', timeEl(p.created)),
    p.response ? el('div', { class: 'feedback-answer' },
      el('p', { class: 'small' },
        el('strong', { text: p.department ? `Answer from ${p.department}` : 'The city\'s answer' }),
        p.answered ? [', ', timeEl(p.answered)] : ''),
      el('p', { class: 'feedback-response', text: p.response })) : '',
  ];
}

function listItem(feature) {
  return el('li', { class: 'feedback-item', 'data-feedback': feature.id, 'data-status': feature.properties?.status },
    feedbackFacts(feature),
    feature.geometry ? el('button', { type: 'button', class: 'ds-button small',
      onclick: () => showFeedbackOnMap(feature) }, 'Show on the map') : '');
}

function showFeedbackOnMap(feature) {
  const positions = positionsOf(feature.geometry);
  if (!positions.length) return;
  const at = positions[0];
  state.map.easeTo({ center: at, zoom: Math.max(state.map.getZoom(), 15) });
  switchOn(FEEDBACK);
  showFeedbackPopup(feature, { lng: at[0], lat: at[1] });
}

function showFeedbackPopup(feature, lngLat) {
  showTip(null);
  state.popup?.remove();
  state.popup = new maplibregl.Popup({ maxWidth: '320px', className: 'feature-popup feedback-popup' })
    .setLngLat(lngLat).setDOMContent(el('div', { 'data-feedback': feature.id }, feedbackFacts(feature)))
    .addTo(state.map);
}

/** A moderator's item: publish or reject it when new; set it in progress, answer it or reject it when published. */
function queueItem(feature) {
  const p = feature.properties || {};
  const id = String(feature.id);
  const error = el('p', { class: 'error', 'aria-live': 'assertive' });
  const node = el('li', { class: 'moderation-item', 'data-feedback': id, 'data-status': p.status });
  const act = (label, action, change) => el('button', { type: 'button', 'data-action': action,
    onclick: () => moderate(node, id, change, error) }, label);
  const actions = p.status === 'received'
    ? [act('Publish', 'publish', { status: 'published' }), act('Reject', 'reject', { status: 'rejected' })]
    : [p.status === 'published' ? act('In progress', 'in-progress', { status: 'in progress' }) : '',
      act('Reject', 'reject', { status: 'rejected' })];
  let answer = '';
  if (p.status !== 'received') {
    const response = el('textarea', { id: `answer-${id}`, name: 'response', rows: 3 });
    response.value = p.response || '';
    const department = el('input', { id: `answer-department-${id}`, name: 'department' });
    department.value = p.department || '';
    answer = el('form', { class: 'answer-form', 'aria-label': 'Answer', onsubmit: (event) => {
      event.preventDefault();
      moderate(node, id, { status: 'answered', response: response.value, department: department.value || null },
        error);
    } },
    el('div', { class: 'field' }, el('label', { for: `answer-${id}`, text: 'The city\'s answer' }), response),
    el('div', { class: 'field' }, el('label', { for: `answer-department-${id}`, text: 'Department' }), department),
    el('button', { type: 'submit', class: 'primary', 'data-action': 'answer' }, 'Answer'));
  }
  node.append(...feedbackFacts(feature),
    p.contact ? el('p', { class: 'small' }, 'Contact: ', el('span', { class: 'contact', text: p.contact })) : '',
    el('div', { class: 'actions' }, actions), answer, error);
  return node;
}

/** A moderator's change (a JSON merge patch of the item's properties); the server says why when it refuses. */
async function moderate(node, id, change, error) {
  const buttons = [...node.querySelectorAll('button')];
  buttons.forEach((b) => { b.disabled = true; });
  error.textContent = '';
  const answer = await send(api(OGC, `collections/${FEEDBACK}/items/${encodeURIComponent(id)}`), 'PATCH', change,
    'application/merge-patch+json');
  buttons.forEach((b) => { b.disabled = false; });
  if (!answer.ok) {
    error.textContent = `Not changed: ${answer.message}`;
    return;
  }
  if (state.feedback && answer.doc?.type === 'Feature') {
    state.feedback.items.set(id, answer.doc);
    renderFeedback();
  }
}

/** A write to the platform, as the signed-in user when there is one: { ok, status, doc, message }, the message the
 * server's own reason (an OGC API exception's `description`) when it refuses. */
async function send(url, method, body, type) {
  const auth = signedIn(url);
  let response;
  try {
    response = await fetch(url, { ...auth, method, body: JSON.stringify(body),
      headers: { 'Content-Type': type, Accept: 'application/geo+json, application/json;q=0.9', ...auth.headers } });
  } catch (err) {
    return { ok: false, status: 0, doc: null, message: `the platform cannot be reached (${err.message})` };
  }
  let doc = null;
  try { doc = await response.json(); } catch { /* no JSON body */ }
  if (response.ok) return { ok: true, status: response.status, doc, message: '' };
  const reason = doc?.description || doc?.message || response.statusText || 'refused';
  return { ok: false, status: response.status, doc, message: `${reason} (HTTP ${response.status})` };
}

// the citizen's way: the button, a place on the map (or the map's centre, from a keyboard), the form, Send

function startFeedback() {
  const fb = state.feedback;
  if (!fb) return;
  fb.picking = true;
  $('#feedback-thanks').hidden = true;
  $('#feedback-form').hidden = true;
  $('#feedback-pick').hidden = false;
  $('#feedback-start').hidden = true;
  note('Click the place you want to tell the city about.');
  state.map.getCanvas().style.cursor = 'crosshair';
  $('#feedback-centre').focus();
}

function pickPlace(lngLat) {
  const fb = state.feedback;
  if (!fb) return;
  fb.picking = false;
  // six decimals: ten centimetres, more than a click is worth
  fb.place = [Number(lngLat.lng.toFixed(6)), Number(lngLat.lat.toFixed(6))];
  state.map.getCanvas().style.cursor = '';
  state.map.getSource('feedback-place').setData({ type: 'Feature', geometry: { type: 'Point', coordinates: fb.place },
    properties: {} });
  note('');
  $('#feedback-pick').hidden = true;
  $('#feedback-place').textContent = `At ${fb.place[1].toFixed(5)}, ${fb.place[0].toFixed(5)} (marked on the map)`;
  $('#feedback-error').textContent = '';
  $('#feedback-form').hidden = false;
  countFeedback();
  $('#feedback-form').scrollIntoView({ block: 'nearest' });
  $('#feedback-category').focus({ preventScroll: true });
}

/** Back to the button: no place chosen, the form emptied. */
function cancelFeedback({ focus = false } = {}) {
  if (state.feedback) {
    state.feedback.picking = false;
    state.feedback.place = null;
  }
  state.map?.getSource('feedback-place')?.setData(EMPTY);
  if (state.map) state.map.getCanvas().style.cursor = '';
  $('#feedback-pick').hidden = true;
  $('#feedback-form').hidden = true;
  $('#feedback-form').reset();
  $('#feedback-error').textContent = '';
  $('#feedback-start').hidden = false;
  if (focus) $('#feedback-start').focus();
}

/** The characters written, as the server counts them (code points, not UTF-16 units); over the limit it says so, and
 * the server's answer says it too. */
function countFeedback() {
  const n = [...$('#feedback-text').value].length;
  const counter = $('#feedback-count');
  counter.textContent = n > FEEDBACK_MAX
    ? `${fmt(n)} of at most ${fmt(FEEDBACK_MAX)} characters: ${fmt(n - FEEDBACK_MAX)} too many`
    : `${fmt(n)} / ${fmt(FEEDBACK_MAX)} characters`;
  counter.classList.toggle('over', n > FEEDBACK_MAX);
}

async function onSendFeedback(event) {
  event.preventDefault();
  const fb = state.feedback;
  if (!fb) return;
  const error = $('#feedback-error');
  const button = $('#feedback-send');
  const contact = $('#feedback-contact').value.trim();
  // what is missing or wrong, the server says (one set of rules, the server's)
  const body = { type: 'Feature', geometry: fb.place ? { type: 'Point', coordinates: fb.place } : null,
    properties: { category: $('#feedback-category').value || null, text: $('#feedback-text').value,
      ...(contact ? { contact } : {}) } };
  error.textContent = '';
  button.disabled = true;
  $('#feedback-form').setAttribute('aria-busy', 'true');
  const answer = await send(api(OGC, `collections/${FEEDBACK}/items`), 'POST', body, 'application/geo+json');
  button.disabled = false;
  $('#feedback-form').removeAttribute('aria-busy');
  if (!answer.ok) {
    error.textContent = `Not sent: ${answer.message}`;
    return;
  }
  const status = answer.doc?.properties?.status;
  cancelFeedback({ focus: true }); // the thanks, a status region, is read out
  const thanks = $('#feedback-thanks');
  thanks.dataset.status = status || '';
  thanks.textContent = FEEDBACK_PUBLIC.has(status)
    ? 'Thank you! Your message is published: it is on the map and in the list below.'
    : 'Thank you! Your message was received and is waiting for moderation: it is shown once the city publishes it.';
  thanks.hidden = false;
  if (state.feedback === fb && answer.doc?.type === 'Feature' && (FEEDBACK_PUBLIC.has(status) || fb.moderator)) {
    fb.items.set(String(answer.doc.id), answer.doc);
    renderFeedback();
  }
}

function wireFeedback() {
  $('#feedback-start').addEventListener('click', startFeedback);
  $('#feedback-centre').addEventListener('click', () => pickPlace(state.map.getCenter()));
  $('#feedback-pick-cancel').addEventListener('click', () => cancelFeedback({ focus: true }));
  $('#feedback-cancel').addEventListener('click', () => cancelFeedback({ focus: true }));
  $('#feedback-text').addEventListener('input', countFeedback);
  $('#feedback-form').addEventListener('submit', onSendFeedback);
  $('#feedback').addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && (state.feedback?.picking || !$('#feedback-form').hidden)) {
      cancelFeedback({ focus: true });
    }
  });
  // Escape on the map too: the pointer is there while choosing the place
  state.map.getContainer().addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && state.feedback?.picking) cancelFeedback({ focus: true });
  });
}

// ---------------------------------------------------------------- signing in: HTTP Basic or the city's OpenID
// Connect issuer (authorization code flow with PKCE: the cockpit is a public client), for this tab only
const OIDC_KEY = 'udp.cockpit.oidc'; // the flow's verifier and state while the browser is at the issuer

function base64url(bytes) {
  let binary = '';
  new Uint8Array(bytes).forEach((b) => { binary += String.fromCharCode(b); });
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The issuer's endpoints from its discovery document. */
async function issuerEndpoints(issuer) {
  const response = await fetch(`${issuer}/.well-known/openid-configuration`, { credentials: 'omit' });
  if (!response.ok) throw new Error(`the city's sign-in service answered ${response.status}`);
  return response.json();
}

/** To the issuer's sign-in page; it sends the browser back here with a code. */
async function startCitySignIn() {
  const { oidc } = state.me || {};
  const error = $('#sign-in-error');
  try {
    const endpoints = await issuerEndpoints(oidc.issuer);
    const verifier = base64url(crypto.getRandomValues(new Uint8Array(32)));
    const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
    const flow = { verifier, state: base64url(crypto.getRandomValues(new Uint8Array(16))),
      token: endpoints.token_endpoint, redirect: location.origin + location.pathname, client: oidc.client_id };
    sessionStorage.setItem(OIDC_KEY, JSON.stringify(flow));
    const url = new URL(endpoints.authorization_endpoint);
    for (const [key, value] of Object.entries({ response_type: 'code', client_id: flow.client, scope: 'openid',
      redirect_uri: flow.redirect, state: flow.state, code_challenge: challenge, code_challenge_method: 'S256' })) {
      url.searchParams.set(key, value);
    }
    location.assign(url.href);
  } catch (err) {
    error.textContent = `Not signed in: ${err.message}`;
  }
}

/** Back from the issuer: the code exchanged for an access token (with the verifier only this tab knows). */
async function finishCitySignIn() {
  const params = new URLSearchParams(location.search);
  if (!params.has('state') || !(params.has('code') || params.has('error'))) return null;
  let flow = null;
  try { flow = JSON.parse(sessionStorage.getItem(OIDC_KEY) || 'null'); } catch { /* none */ }
  sessionStorage.removeItem(OIDC_KEY);
  history.replaceState(null, '', location.pathname + location.hash); // the code is used once, never bookmarked
  if (!flow || params.get('state') !== flow.state) {
    note('Not signed in: the answer of the sign-in service does not belong to this tab.');
    return null;
  }
  if (params.has('error')) {
    note(`Not signed in: ${params.get('error_description') || params.get('error')}`);
    return null;
  }
  const response = await fetch(flow.token, {
    method: 'POST', credentials: 'omit',
    body: new URLSearchParams({ grant_type: 'authorization_code', code: params.get('code'),
      redirect_uri: flow.redirect, client_id: flow.client, code_verifier: flow.verifier }) });
  const answer = response.ok ? await response.json() : null;
  if (!answer?.access_token) {
    note(`Not signed in: the sign-in service refused the code (HTTP ${response.status}).`);
    return null;
  }
  let name = 'city account';
  try {
    const claims = JSON.parse(atob(answer.access_token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    name = claims.preferred_username || claims.name || claims.sub || name;
  } catch { /* a token that is not a JWT: the platform will say */ }
  return { name, bearer: answer.access_token };
}

function basicOf(name, password) {
  const bytes = new TextEncoder().encode(`${name}:${password}`);
  let binary = '';
  bytes.forEach((b) => { binary += String.fromCharCode(b); });
  return btoa(binary);
}

function storedAuth() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(AUTH_KEY) || 'null');
    return saved && typeof saved.name === 'string'
      && (typeof saved.basic === 'string' || typeof saved.bearer === 'string') ? saved : null;
  } catch {
    return null;
  }
}

function storeAuth(auth) {
  try {
    if (auth) sessionStorage.setItem(AUTH_KEY, JSON.stringify(auth));
    else sessionStorage.removeItem(AUTH_KEY);
  } catch {
    // storage refused (a browser setting): the sign-in lasts until the page is left
  }
}

/** Whether the platform accepts a sign-in: { ok, status, message } (its own message when it refuses). */
async function checkCredentials(auth) {
  let response;
  try {
    response = await fetch(STA, { headers: { Accept: 'application/json', Authorization: authorization(auth) },
      credentials: 'omit', cache: 'no-store' });
  } catch (err) {
    return { ok: false, status: 0, message: `the platform cannot be reached (${err.message})` };
  }
  if (response.ok) return { ok: true, status: response.status, message: '' };
  let message = response.statusText || 'refused';
  try { message = (await response.json()).message || message; } catch { /* not JSON */ }
  return { ok: false, status: response.status, message: `${message} (HTTP ${response.status})` };
}

function renderAccount() {
  const auth = state.auth;
  $('#account-status').textContent = auth ? `Signed in as ${auth.name}` : '';
  $('#account-sep').hidden = !auth;
  $('#sign-out').hidden = !auth;
  $('#sign-in-toggle').hidden = Boolean(auth);
  if (auth) document.body.dataset.user = auth.name;
  else delete document.body.dataset.user;
}

function showSignIn(open, { focus = true } = {}) {
  const form = $('#sign-in-form');
  form.hidden = !open;
  $('#sign-in-toggle').setAttribute('aria-expanded', String(open));
  if (open) {
    $('#sign-in-error').textContent = '';
    if (focus) $('#sign-in-name').focus();
  } else {
    $('#sign-in-password').value = '';
    if (focus) $('#sign-in-toggle').focus();
  }
}

async function onSignIn(event) {
  event.preventDefault();
  const form = $('#sign-in-form');
  const error = $('#sign-in-error');
  const nameInput = $('#sign-in-name');
  const passwordInput = $('#sign-in-password');
  const name = nameInput.value.trim();
  const password = passwordInput.value;
  error.textContent = '';
  nameInput.removeAttribute('aria-invalid');
  passwordInput.removeAttribute('aria-invalid');
  if (!name || name.includes(':') || !password) {
    const input = !name || name.includes(':') ? nameInput : passwordInput;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    error.textContent = !name ? 'Enter your user name.' : name.includes(':')
      ? 'A user name cannot hold a colon (:).' : 'Enter your password.';
    return;
  }
  const submit = $('#sign-in-submit');
  submit.disabled = true;
  form.setAttribute('aria-busy', 'true');
  const basic = basicOf(name, password);
  const answer = await checkCredentials({ basic });
  submit.disabled = false;
  form.removeAttribute('aria-busy');
  if (!answer.ok) {
    error.textContent = `Not signed in: ${answer.message}`;
    passwordInput.setAttribute('aria-invalid', 'true');
    passwordInput.select();
    passwordInput.focus();
    return;
  }
  state.auth = { name, basic };
  storeAuth(state.auth);
  showSignIn(false, { focus: false });
  renderAccount();
  $('#sign-out').focus();
  await reloadData();
}

async function signOut() {
  state.auth = null;
  storeAuth(null);
  renderAccount();
  $('#sign-in-toggle').focus();
  await reloadData();
}

function wireAccount() {
  const toggle = $('#sign-in-toggle');
  toggle.addEventListener('click', () => showSignIn($('#sign-in-form').hidden));
  $('#sign-in-cancel').addEventListener('click', () => showSignIn(false));
  $('#sign-in-form').addEventListener('submit', onSignIn);
  $('#sign-in-form').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') showSignIn(false);
  });
  $('#sign-out').addEventListener('click', signOut);
  $('#sign-in-city').addEventListener('click', startCitySignIn);
}

/** A sign-in kept from before a reload of the page (or just made at the city's issuer), if the platform still
 * accepts it; and whether the city's issuer signs in here (the platform's /me says). */
async function restoreSignIn() {
  try {
    state.me = await getJSON(new URL('../me', location.href).href);
  } catch { state.me = null; }
  $('#sign-in-city').hidden = !state.me?.oidc;
  const fresh = await finishCitySignIn();
  if (fresh) storeAuth(fresh);
  const saved = storedAuth();
  if (saved) {
    const answer = await checkCredentials(saved);
    if (answer.ok || (answer.status !== 401 && answer.status !== 403)) state.auth = saved;
    else {
      storeAuth(null);
      note(`Signed out: the platform no longer accepts ${saved.name}'s sign-in (${answer.message}).`);
    }
  }
  renderAccount();
}

/** After signing in or out: everything read again as the new user, so internal collections and sensors appear or
 * go without reloading the page. The view, the layers' on/off states and the chosen property and indicator stay;
 * an open panel closes (it may show what the new user may not see). */
function reloadData() {
  state.reloading = state.reloading.then(reload).catch((err) => console.warn('reload:', err.message));
  return state.reloading;
}

async function reload() {
  await state.started;
  document.body.dataset.ready = 'false';
  if (!$('#details').hidden) closeDetails({ focus: false });
  note('');
  const shown = new Map([...state.layers].map(([id, record]) => [id, record.input.checked]));
  const property = $('#property-select').value;
  const indicator = $('#indicator-select').value;
  state.popup?.remove(); // it may show what the new user may not see
  for (const record of state.layers.values()) removeLayers(record);
  state.layers.clear();
  $('#layer-list').replaceChildren();
  $('#layer-list').setAttribute('aria-busy', 'true');
  $('#goto-select').replaceChildren(el('option', { value: '', text: 'choose a place…' }));
  clearSensors();
  await Promise.all([
    loadCollections(shown).catch((err) => note(`The collections could not be read: ${err.message}`)),
    loadTiles(),
  ]);
  await Promise.all([
    loadSensors(property).catch((err) => note(`The sensors could not be read: ${err.message}`)),
    initIndicators(indicator),
    loadFeedback(), // a moderator's view, or the public's
  ]);
  syncSubscriptions();
  followInternal();
  await searchCatalogue(); // internal datasets come and go with signing in and out
  document.body.dataset.ready = 'true';
}

/** Observations of internal Things are never announced over MQTT: while signed in, their latest values are read
 * every 10 s (one request: the Datastreams of the Things marked internal, each with its latest Observation). When
 * the cockpit polls anyway (no broker), that reads them too. */
function followInternal() {
  clearInterval(state.internalTimer);
  state.internalTimer = state.auth ? setInterval(pollInternal, POLL_MS) : null;
}

async function pollInternal() {
  if (!state.auth || state.pollTimer || state.internalBusy) return;
  state.internalBusy = true;
  let url = api(STA, 'Datastreams', {
    $filter: INTERNAL_THINGS,
    $select: 'id',
    $expand: 'Observations($select=result,phenomenonTime,resultTime;$orderby=phenomenonTime desc;$top=1)',
    $top: 1000,
  });
  try {
    while (url) {
      const doc = await getJSON(url);
      const now = Date.now();
      for (const ds of doc.value || []) {
        const id = ds['@iot.id'];
        const known = state.sensors.get(id);
        const obs = ds.Observations?.[0];
        if (!known || !obs) continue;
        known.since = now;
        const time = endOf(obs.phenomenonTime) || obs.resultTime;
        if (known.time !== time || known.result !== obs.result) applyObservation(id, obs.result, time);
      }
      url = doc['@iot.nextLink'] ? sameOrigin(doc['@iot.nextLink']) : null;
    }
  } catch (err) {
    console.warn('internal sensors:', err.message);
  } finally {
    state.internalBusy = false;
  }
}

// ---------------------------------------------------------------- start

function wireControls() {
  wireFeedback();
  $('#details-close').addEventListener('click', () => closeDetails());
  $('#details').addEventListener('keydown', (event) => {
    if (event.key === 'Escape') closeDetails();
  });
  const property = $('#property-select');
  property.addEventListener('change', () => showProperty(property.value));
  const indicator = $('#indicator-select');
  indicator.addEventListener('change', () => showIndicator(indicator.value));
  const goto = $('#goto-select');
  goto.addEventListener('change', () => {
    const box = boxOf(state.collections.find((c) => c.id === goto.value));
    if (box) fitBox(box);
  });
  $('#data-form').addEventListener('submit', (event) => {
    event.preventDefault();
    searchCatalogue();
  });
  $('#data-in-view').addEventListener('change', () => searchCatalogue());
  $('#find-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('#find').value.trim().toLowerCase();
    if (!text) return;
    const sensors = [...state.sensors.values()].filter((s) => s.lnglat);
    const found = sensors.find((s) => (s.thing || '').toLowerCase() === text)
      || sensors.find((s) => (s.thing || '').toLowerCase().includes(text))
      || sensors.find((s) => (s.name || '').toLowerCase().includes(text));
    if (found) {
      const group = state.property ? found.group : found.place;
      selectSensor(group && group.property === found.property ? groupValue(group).id : found.id, { fly: true });
    } else {
      note(`No sensor is named like “${$('#find').value.trim()}”.`);
    }
  });
}

function initialView() {
  const candidates = [...state.indicatorCollections,
    ...[...state.layers.values()].filter((r) => r.input.checked && r.collection).map((r) => r.collection)];
  const box = candidates.map(boxOf).find(local);
  if (box) {
    fitBox(box, { animate: false });
    return;
  }
  const located = boundsOf({ type: 'MultiPoint', coordinates: [...state.places.values()].map((g) => g.lnglat) });
  if (located) fitBox(boxOfBounds(located), { maxZoom: 11, animate: false });
}

async function main() {
  initMap();
  wireControls();
  wireAccount();
  // before the first read, so that it is read as the signed-in user; and the map's own layers, which the
  // collections' are put between
  await Promise.all([restoreSignIn(), state.loaded]);
  getJSON(BASE.href).then((doc) => {
    if (doc.title) {
      $('#city-title').textContent = doc.title;
      document.title = `${doc.title} · the cockpit`;
    }
  }).catch((err) => console.warn('landing page:', err.message));
  // the tiles first: they take their room above the map before the map chooses its view
  await Promise.all([
    loadCollections().catch((err) => note(`The collections could not be read: ${err.message}`)),
    loadTiles(),
  ]);
  state.map.resize(); // now, not when MapLibre's own observer of the container's size next runs
  initialView();
  await Promise.all([
    loadSensors().catch((err) => note(`The sensors could not be read: ${err.message}`)),
    initIndicators(),
    loadFeedback(),
  ]);
  if (!state.places.size && ![...state.layers.values()].some((r) => r.collection)) {
    note('Nothing to map yet: declare collections in config.yml, or create Things with a Location.');
  }
  await Promise.all([startLive(), searchCatalogue()]);
  followInternal();
  state.ready = true;
  document.body.dataset.ready = 'true';
}

// for tests and the curious: the map and the state, read-only by convention
window.udpCockpit = { get map() { return state.map; }, state, selectSensor, selectArea, showIndicator,
  searchCatalogue };

state.started = main();
