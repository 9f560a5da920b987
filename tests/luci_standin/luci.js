/* LuCI stand-in: the part of LuCI's client-side API (openwrt/luci,
 * modules/luci-base/htdocs/luci-static/resources/) that the wgrouter views
 * call, written for the tests from the behaviour read in luci-base; no
 * luci-base code is in here.  Each rule names the file and function it
 * models.  What the real one does and this one does not: no translations,
 * no themes' JavaScript, no widgets the views do not use, no network.
 * Observed against luci-base's own JavaScript (LuCI of August 2024,
 * oui-lrf/luci-mt7981 0d4d477) running the configuration view: validate()
 * is asked about an empty field too, Map.lookupOption finds rendered fields
 * only, readonly comes from session access, a row is dragged from its
 * handle (mousedown, dragstart, dragenter, dragover, drop).
 *
 * The page that loads this file sets window.STANDIN = { uci: {config: [sections]},
 * ubus: URL of the ubus JSON-RPC endpoint, sessionid, acl: {read, write} }
 * first; everything the view asks of uci, rpc and ui is recorded in
 * window.RECORD. */
(function(window, document) {
'use strict';

var STANDIN = window.STANDIN || {};
var RECORD = window.RECORD = { uci: [], rpc: [], ui: [], poll: [], applied: [], errors: [] };

window.addEventListener('error', function(ev) { RECORD.errors.push(String(ev.message)); });
window.addEventListener('unhandledrejection', function(ev) {
	RECORD.errors.push(String(ev.reason && ev.reason.stack || ev.reason));
});

/* ------------------------------------------------------------ strings */

/* luci.js: _() looks the string up in the loaded catalog; there is none here */
window._ = function(s) { return s; };
window.N_ = function(n, one, many) { return n == 1 ? one : many; };

/* cbi.js String.prototype.format: %s %d %f %h %q %m with padding, width and
 * precision; for %m the width is the base (1000 or 1024) and the value is
 * scaled to ' K', ' M', ... with 'i' appended for base 1024 */
String.prototype.format = function() {
	var args = arguments, n = 0, str = String(this);

	return str.replace(/%('.|0|\x20)?(-)?(\d+)?(\.\d+)?([%bcdufosxXqhtm])/g,
		function(all, pad, left, width, prec, type) {
			if (type == '%')
				return '%';
			var v = args[n++], out;

			switch (type) {
			case 'd': out = Math.floor(+v || 0).toFixed(0); break;
			case 'u': out = Math.floor(Math.max(+v || 0, 0)).toFixed(0); break;
			case 'f': out = prec ? (+v || 0).toFixed(+prec.substring(1)) : String(+v || 0); break;
			case 'x': out = Math.floor(+v || 0).toString(16); break;
			case 'h': out = String(v == null ? '' : v).replace(/&/g, '&#38;').replace(/"/g, '&#34;')
				.replace(/'/g, '&#39;').replace(/</g, '&#60;').replace(/>/g, '&#62;'); break;
			case 'q': out = String(v == null ? '' : v).replace(/"/g, '&#34;').replace(/'/g, '&#39;'); break;
			case 'm':
				var base = width ? +width : 1000, val = +v || 0, i = 0,
				    units = [ ' ', ' K', ' M', ' G', ' T', ' P', ' E' ];
				for (; i < units.length && val > base; i++)
					val /= base;
				out = i ? val.toFixed(prec ? ~~(10 * +('0' + prec)) : 2) + units[i] + (base == 1024 ? 'i' : '')
					: val + ' ';
				width = null;
				break;
			default: out = (v == null) ? '' : String(v);
			}
			if (width)
				while (out.length < +width)
					out = left ? out + ' ' : ((pad && pad.charAt(0) != "'") ? pad : ' ') + out;
			return out;
		});
};

/* ------------------------------------------------------------ classes */

/* luci.js Class: extend() copies the properties onto a new prototype whose
 * constructor calls __init__; super(name, args) calls the parent's method */
function Class() {}
Class.prototype.__init__ = function() {};
Class.extend = function(props) {
	var parent = this;
	var child = function() {
		if (this.__init__)
			return this.__init__.apply(this, arguments);
	};
	child.prototype = Object.create(parent.prototype);
	Object.keys(props || {}).forEach(function(k) { child.prototype[k] = props[k]; });
	child.prototype.constructor = child;
	child.extend = Class.extend;
	child.isSubclass = Class.isSubclass;
	child.__parent__ = parent;
	return child;
};
Class.isSubclass = function(cls) {
	return typeof cls == 'function' && cls.prototype instanceof Class;
};

/* ------------------------------------------------------------ dom */

/* luci.js DOM.append: an array's items are appended as nodes or text
 * nodes; a single node is appended; any other single value becomes the
 * node's innerHTML (so a view escapes text it passes alone, '%h') */
function append(node, children) {
	if (children == null)
		return;
	if (Array.isArray(children))
		children.forEach(function(c) {
			if (c instanceof Node)
				node.appendChild(c);
			else if (c != null)
				node.appendChild(document.createTextNode(String(c)));
		});
	else if (children instanceof Node)
		node.appendChild(children);
	else
		node.innerHTML = String(children);
}

var dom = {
	elem: function(e) { return e instanceof Node; },
	create: function(tag, attrs, children) {
		var node;

		if (Array.isArray(tag)) {
			node = document.createDocumentFragment();
			append(node, tag);
		}
		else {
			node = (tag.charAt(0) == '<') ? dom.parse(tag) : document.createElement(tag);
		}
		/* luci.js DOM.create: the second argument is the children unless it is
		 * an object that is no array (a Node too: it is taken for attributes) */
		if (attrs != null && (typeof attrs != 'object' || Array.isArray(attrs))) {
			children = attrs;
			attrs = null;
		}
		if (node.nodeType == 11) {
			append(node, children);
			return node;
		}
		Object.keys(attrs instanceof Node ? {} : (attrs || {})).forEach(function(k) {
			var v = attrs[k];
			if (v == null)
				return;
			if (typeof v == 'function')
				node.addEventListener(k, v);
			else if (typeof v == 'object')
				node.setAttribute(k, JSON.stringify(v));
			else
				node.setAttribute(k, v);
		});
		append(node, children);
		return node;
	},
	parse: function(html) {
		var t = document.createElement('template');
		t.innerHTML = html.trim();
		return t.content.firstChild;
	},
	/* luci.js DOM.content: replace the children */
	content: function(node, children) {
		while (node.firstChild)
			node.removeChild(node.firstChild);
		append(node, children);
		return node;
	},
	append: function(node, children) { append(node, children); return node; },
	parent: function(node, selector) {
		while (node && node.closest == null)
			node = node.parentNode;
		return node ? node.closest(selector) : null;
	},
	matches: function(node, selector) { return node.matches && node.matches(selector); },
	/* luci.js DOM.bindClassInstance / findClassInstance / callClassMethod */
	bindClassInstance: function(node, inst) { node.__class_instance__ = inst; return node; },
	findClassInstance: function(node) {
		for (; node; node = node.parentNode)
			if (node.__class_instance__)
				return node.__class_instance__;
		return null;
	},
	callClassMethod: function(node, method) {
		var inst = dom.findClassInstance(node);
		var args = Array.prototype.slice.call(arguments, 2);
		return inst && typeof inst[method] == 'function' ? inst[method].apply(inst, args) : null;
	}
};
window.E = function() { return dom.create.apply(dom, arguments); };

/* the stand-in's own markup: E() with nested arrays of children flattened */
function flat(list) {
	return list.reduce(function(out, x) { return out.concat(Array.isArray(x) ? flat(x) : [ x ]); }, []);
}
function H(tag, attrs, children) {
	return dom.create(tag, Array.isArray(attrs) ? flat(attrs) : attrs, Array.isArray(children) ? flat(children) : children);
}

/* ------------------------------------------------------------ L */

var L = window.L = {
	env: { nodespec: {}, sessionid: 'standin' },
	Class: Class,
	dom: dom,
	bind: function(fn, self) {
		return Function.prototype.bind.apply(fn, [ self ].concat(Array.prototype.slice.call(arguments, 2)));
	},
	resolveDefault: function(p, def) { return Promise.resolve(p).catch(function() { return def; }); },
	isObject: function(v) { return v != null && typeof v == 'object'; },
	toArray: function(v) { return v == null ? [] : (Array.isArray(v) ? v : String(v).split(/\s+/).filter(Boolean)); },
	/* luci.js hasViewPermission: false when the menu node of the page is only
	 * readable by the session's ACLs (nodespec.readonly) */
	hasViewPermission: function() { return !(STANDIN.acl && STANDIN.acl.write === false); },
	/* luci.js raise(type, fmt, ...): the message formatted, and the stack
	 * of the caller appended to it after a newline (seen in real LuCI,
	 * issue 13: the page showed a JavaScript stack line) */
	raise: function(type, fmt) {
		var msg = String.prototype.format.apply(fmt || 'Unspecified error', Array.prototype.slice.call(arguments, 2));
		var e = new Error(msg), frames = String(new Error().stack || '').split(/\n/).slice(2);
		e.name = type || 'Error';
		if (frames.length)
			e.message += '\n' + frames.join('\n');
		throw e;
	},
	error: function(e) { RECORD.errors.push(String(e && e.stack || e)); throw e; }
};
L.env.sessionid = STANDIN.sessionid || '00000000000000000000000000000000';

/* ------------------------------------------------------------ cbi.js */

/* cbi.js cbi_update_table(table, data, placeholder), with data an array of
 * rows: the titles are the th cells of the table's title row (tr.table-titles);
 * each data row becomes a tr.tr of one cell per title, class td, with the
 * title's trimmed text as data-title (none when empty) and the value (or '')
 * as its children; rows alternate cbi-rowstyle-1 and -2 and replace the rows
 * after the title row, extra old rows are removed; with no data row and a
 * placeholder, one tr.placeholder holds it.  (The form without an array,
 * titling existing rows, is not used by the views.) */
window.cbi_update_table = function(table, data, placeholder) {
	var target = (table instanceof Node) ? table : document.querySelector(table);
	if (!target)
		return;
	target.querySelectorAll('tr.table-titles, .tr.table-titles, .cbi-section-table-titles').forEach(function(head) {
		var titles = Array.prototype.slice.call(head.querySelectorAll('th, .th'));
		var old = Array.prototype.filter.call(target.querySelectorAll('tr, .tr'), function(r) { return r !== head; });
		if (!Array.isArray(data))
			return;
		old.forEach(function(r) { r.parentNode.removeChild(r); });
		data.forEach(function(row, n) {
			target.appendChild(dom.create('tr', { 'class': 'tr cbi-rowstyle-' + (n % 2 + 1) }, titles.map(function(th, i) {
				var text = (th.innerText || th.textContent || '').trim();
				var cell = dom.create('td', { 'class': th.className, 'data-title': text !== '' ? text : null },
					(row[i] != null) ? row[i] : '');
				cell.classList.remove('th');
				cell.classList.add('td');
				return cell;
			})));
		});
		if (placeholder && !data.length) {
			var cell = dom.create('td', { 'class': titles[0].className }, placeholder);
			cell.classList.remove('th');
			cell.classList.add('td');
			target.appendChild(dom.create('tr', { 'class': 'tr placeholder' }, [ cell ]));
		}
	});
};

/* ------------------------------------------------------------ uci */

/* uci.js: load() fetches a config (rpcd uci get); get/set/unset/add/remove/
 * move change the local copy and queue changes; save() sends them (uci set,
 * add, delete, then uci order for reordered configs, uci.js reorderSections)
 * and reloads.  Here the "server" is STANDIN.uci and each call is recorded. */
var saved = JSON.parse(JSON.stringify(STANDIN.uci || {}));
var local = null, reordered = {}, counter = 0;

function copyConfig() { return JSON.parse(JSON.stringify(saved)); }
function find(conf, sid) {
	return (local[conf] || []).filter(function(s) { return s['.name'] == sid; })[0];
}
function denied() {
	/* rpcd uci.c rpc_uci_write_access: without the ACL's write entry every
	 * change is refused with "Permission denied" */
	return STANDIN.acl && STANDIN.acl.write === false;
}

var uci = Class.extend({
	/* a config the fixture does not hold is one rpcd's uci get refuses
	 * (no read access in the ACL, rpcd uci.c rpc_uci_read_access): the load
	 * rejects */
	load: function(confs) {
		var missing;
		if (local == null)
			local = copyConfig();
		[].concat(confs).forEach(function(c) {
			RECORD.uci.push([ 'load', c ]);
			if (!local[c])
				missing = c;
		});
		return missing ? Promise.reject(new Error('Permission denied: ' + missing)) : Promise.resolve([].concat(confs));
	},
	unload: function() {},
	sections: function(conf, type, cb) {
		var list = (local && local[conf] || []).filter(function(s) { return type == null || s['.type'] == type; });
		if (cb)
			list.forEach(cb);
		return list;
	},
	get: function(conf, sid, opt) {
		var s = local && find(conf, sid);
		if (!s)
			return null;
		return (opt == null) ? s : (s[opt] === undefined ? null : s[opt]);
	},
	get_first: function(conf, type, opt) {
		var s = this.sections(conf, type)[0];
		return s ? (opt == null ? s : s[opt]) : null;
	},
	set: function(conf, sid, opt, val) {
		var s = find(conf, sid);
		RECORD.uci.push([ 'set', conf, sid, opt, val ]);
		if (s)
			s[opt] = val;
	},
	unset: function(conf, sid, opt) {
		var s = find(conf, sid);
		RECORD.uci.push([ 'unset', conf, sid, opt ]);
		if (s)
			delete s[opt];
	},
	add: function(conf, type, name) {
		var sid = name || ('new' + (++counter));
		RECORD.uci.push([ 'add', conf, type, sid ]);
		local[conf] = local[conf] || [];
		local[conf].push({ '.name': sid, '.type': type, '.anonymous': !name });
		return sid;
	},
	remove: function(conf, sid) {
		RECORD.uci.push([ 'remove', conf, sid ]);
		local[conf] = (local[conf] || []).filter(function(s) { return s['.name'] != sid; });
	},
	/* uci.js move(conf, sid1, sid2, after): sid1 goes before sid2 (after sid2
	 * when after is true; to the end when sid2 is null) */
	move: function(conf, sid1, sid2, after) {
		var list = local[conf], s1 = find(conf, sid1), i;
		RECORD.uci.push([ 'move', conf, sid1, sid2, !!after ]);
		if (!s1 || sid1 == sid2)
			return false;
		list.splice(list.indexOf(s1), 1);
		i = (sid2 == null) ? list.length : list.indexOf(find(conf, sid2)) + (after ? 1 : 0);
		list.splice(i, 0, s1);
		reordered[conf] = true;
		return true;
	},
	save: function() {
		if (denied())
			return Promise.reject(new Error('Permission denied'));
		Object.keys(reordered).forEach(function(conf) {
			RECORD.uci.push([ 'order', conf, local[conf].map(function(s) { return s['.name']; }) ]);
		});
		reordered = {};
		saved = JSON.parse(JSON.stringify(local));
		RECORD.uci.push([ 'save' ]);
		return Promise.resolve();
	},
	changes: function() { return Promise.resolve({}); },
	/* the configuration as it would be committed, for the test */
	committed: function() { return saved; }
});
uci = new uci();

/* ------------------------------------------------------------ rpc */

/* rpc.js declare(): the returned function posts one JSON-RPC "call"
 * message, [ session id, object, method, params by name ], to the ubus
 * endpoint (rpc.js `call`: request.post(rpcBaseURL + '/OBJECT.METHOD'));
 * the page's STANDIN.ubus is that endpoint, served by fakebus.Uhttpd (the
 * ACL, the session argument and the answer's form are its rules, not
 * written again here).  The reply is taken as rpc.js `parseCallReply` and
 * `handleCallReply` take it: an HTTP error or a JSON-RPC error rejects
 * ("failed with error CODE: MESSAGE"); with `reject: true` a non-zero ubus
 * status rejects ("failed with ubus code N: TEXT", rpc.js getStatusText);
 * the data is result[1], or result[0] when there is none; `expect`'s key
 * picks from it and its value replaces a missing one or one of another
 * type. */
var rpcRequestID = 1;
var rpcStatusText = [ 'Command OK', 'Invalid command', 'Invalid argument', 'Method not found',
	'Resource not found', 'No data received', 'Permission denied', 'Request timeout',
	'Not supported', 'Unspecified error', 'Connection lost' ];

function handleCallReply(d, msg) {
	var type = Object.prototype.toString, ret = null, key;

	if (!L.isObject(msg) || msg.jsonrpc != '2.0')
		L.raise('RPCError', 'RPC call to %s/%s returned invalid message frame', d.object, d.method);
	if (L.isObject(msg.error) && msg.error.code && msg.error.message)
		L.raise('RPCError', 'RPC call to %s/%s failed with error %d: %s', d.object, d.method,
			msg.error.code, msg.error.message);
	if (Array.isArray(msg.result)) {
		if (d.reject && msg.result[0] !== 0)
			L.raise('RPCError', 'RPC call to %s/%s failed with ubus code %d: %s', d.object, d.method,
				msg.result[0], rpcStatusText[msg.result[0]] || 'Unknown error code');
		ret = (msg.result.length > 1) ? msg.result[1] : msg.result[0];
	}
	if (d.expect)
		for (key in d.expect) {
			if (ret != null && key != '')
				ret = ret[key];
			if (ret == null || type.call(ret) != type.call(d.expect[key]))
				ret = d.expect[key];
			break;
		}
	return ret;
}

var rpc = {
	declare: function(d) {
		return function() {
			var args = Array.prototype.slice.call(arguments), params = {};
			(d.params || []).forEach(function(p, i) { params[p] = args[i]; });
			RECORD.rpc.push([ d.object, d.method, params ]);
			var msg = { jsonrpc: '2.0', id: rpcRequestID++, method: 'call',
			            params: [ L.env.sessionid, d.object, d.method, params ] };
			return fetch(STANDIN.ubus + '/' + d.object + '.' + d.method, {
				method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(msg)
			}).then(function(res) {
				if (!res.ok)
					L.raise('RPCError', 'RPC call to %s/%s failed with HTTP error %d: %s', d.object, d.method,
						res.status, res.statusText || '?');
				return res.json();
			}).then(function(reply) {
				var ret = handleCallReply(d, reply);
				return d.filter ? d.filter(ret, params) : ret;
			});
		};
	}
};

/* ------------------------------------------------------------ poll */

/* poll: add(fn, interval) runs fn every interval seconds; the test runs
 * the registered functions itself (poll.step) instead of waiting */
var poll = {
	fns: [],
	add: function(fn, interval) { RECORD.poll.push(interval); this.fns.push(fn); },
	step: function() { return Promise.all(this.fns.map(function(fn) { return fn(); })); },
	start: function() {}, stop: function() {}
};

/* ------------------------------------------------------------ ui */

var ui = {
	/* ui.js addNotification(title, children, classes): a div.alert-message
	 * at the top of #maincontent */
	addNotification: function(title, children, cls) {
		var node = H('div', { 'class': 'alert-message fade-in ' + (cls || '') }, [
			title ? H('h4', title) : '', children ]);
		RECORD.ui.push([ 'notification', cls || '', node.textContent ]);
		var main = document.getElementById('maincontent');
		main.insertBefore(node, main.firstChild);
		return node;
	},
	/* ui.js createHandlerFn(ctx, fn, ...args): the click handler disables the
	 * button until the promise returned by fn settles */
	createHandlerFn: function(ctx, fn) {
		var args = Array.prototype.slice.call(arguments, 2);
		return function(ev) {
			var f = (typeof fn == 'string') ? ctx[fn] : fn, btn = ev && ev.currentTarget;
			if (btn)
				btn.classList.add('spinning'), btn.disabled = true;
			return Promise.resolve(f.apply(ctx, args.concat(Array.prototype.slice.call(arguments)))).finally(function() {
				if (btn)
					btn.classList.remove('spinning'), btn.disabled = false;
			});
		};
	},
	showModal: function(title, children) {
		var overlay = document.getElementById('modal_overlay') ||
			document.body.appendChild(H('div', { 'id': 'modal_overlay' }, H('div', { 'class': 'modal' })));
		dom.content(overlay.firstChild, flat([ H('h4', title), children ]));
		document.body.classList.add('modal-overlay-active');
		RECORD.ui.push([ 'modal', title ]);
		return overlay.firstChild;
	},
	hideModal: function() {
		document.body.classList.remove('modal-overlay-active');
		RECORD.ui.push([ 'hide-modal' ]);
	},
	/* ui.js Table (newer LuCI): header titles are copied onto each cell as
	 * data-title, which the themes show on narrow screens */
	Table: Class.extend({
		__init__: function(captions, options, placeholder) {
			this.captions = captions;
			this.placeholder = placeholder;
			this.node = H('table', { 'class': 'table' }, H('tr', { 'class': 'tr table-titles' },
				captions.map(function(c) { return H('th', { 'class': 'th' }, c); })));
		},
		update: function(rows) {
			var self = this;
			while (this.node.rows.length > 1)
				this.node.deleteRow(1);
			if (!rows.length)
				this.node.appendChild(H('tr', { 'class': 'tr placeholder' }, H('td', { 'class': 'td' }, this.placeholder)));
			rows.forEach(function(cells, n) {
				self.node.appendChild(H('tr', { 'class': 'tr cbi-rowstyle-' + (n % 2 + 1) }, cells.map(function(c, i) {
					var title = self.captions[i];
					return H('td', { 'class': 'td', 'data-title': (typeof title == 'string' && title) ? title : null }, c);
				})));
			});
			return this;
		},
		render: function() { return this.node; }
	}),
	/* ui.js changes.apply(checked): rpcd's uci apply (with rollback when
	 * checked), whose commit sends procd the config.change event of each
	 * changed package (rpcd uci.c rpc_uci_apply_config) */
	changes: {
		apply: function(checked) {
			RECORD.applied.push({ checked: !!checked, configs: JSON.parse(JSON.stringify(saved)) });
			ui.addNotification(null, H('p', 'Configuration changes applied.'), 'info');
		},
		renderChangeIndicator: function() {}
	},
	/* ui.js AbstractElement.setValidator/triggerValidation with
	 * validation.js Validator.validate: an empty value fails unless the field
	 * is optional; then the option's validate() is asked, for an empty value
	 * too, and its result is the verdict: a string marks the field
	 * cbi-input-invalid with the message as data-tooltip */
	validate: function(field, optional, vfunc) {
		var value = field.value, verdict = true;
		if (value.length == 0 && !optional)
			verdict = _('Expecting: %s').format(_('non-empty value'));
		else if (vfunc)
			verdict = vfunc(value);
		if (verdict === true) {
			field.classList.remove('cbi-input-invalid');
			field.removeAttribute('data-tooltip');
			field.removeAttribute('data-tooltip-style');
		}
		else {
			field.classList.add('cbi-input-invalid');
			field.setAttribute('data-tooltip', verdict);
			field.setAttribute('data-tooltip-style', 'error');
		}
		return verdict;
	}
};

/* ------------------------------------------------------------ form */

function isEqual(a, b) { return JSON.stringify(a) == JSON.stringify(b); }

var AbstractElement = Class.extend({
	__init__: function(title, description) {
		this.title = title || '';
		this.description = description || '';
		this.children = [];
	},
	append: function(obj) { this.children.push(obj); },
	stripTags: function(s) { return String(s).replace(/<[^>]+>/g, ''); }
});

/* form.js Map: load() loads the config (and the chained ones) through uci,
 * render() draws the sections into div.cbi-map, save() parses every option
 * (rejecting on an invalid one), then uci.save(), then loads and redraws */
var CBIMap = AbstractElement.extend({
	__init__: function(config, title, description) {
		AbstractElement.prototype.__init__.call(this, title, description);
		this.config = config;
		this.data = uci;
		this.parsechain = [ config ];
		this.readonly = null;
	},
	chain: function(config) { this.parsechain.push(config); },
	section: function(cls) {
		var args = Array.prototype.slice.call(arguments, 1);
		var obj = Object.create(cls.prototype);
		cls.apply(obj, [ this ].concat(args));
		this.append(obj);
		return obj;
	},
	/* form.js Map.load: unless the view set readonly, rpcd's session access
	 * (uci, config, write) decides it: no write access, a readonly form */
	load: function() {
		if (this.readonly == null) {
			RECORD.rpc.push([ 'session', 'access', { scope: 'uci', object: this.config, function: 'write' } ]);
			this.readonly = !!(STANDIN.acl && STANDIN.acl.write === false);
		}
		return uci.load(this.parsechain);
	},
	parse: function() {
		var tasks = [];
		this.children.forEach(function(s) { tasks.push(s.parse()); });
		return Promise.all(tasks);
	},
	/* form.js Map.save: on an invalid value it shows "Save error" with the
	 * message and saves nothing */
	save: function(cb, silent) {
		var self = this;
		return this.parse().then(cb).then(function() { return uci.save(); })
			.then(function() { return self.load(); }).then(function() { return self.reset(); })
			.catch(function(e) {
				if (!silent)
					ui.addNotification(_('Save error'), H('p', [ _('An error occurred while saving the form:'), ' ', String(e.message) ]), 'danger');
				RECORD.ui.push([ 'save-error', String(e.message) ]);
				return Promise.reject(e);
			});
	},
	reset: function() {
		var node = this.root, self = this;
		return this.renderContents().then(function(n) {
			if (node && node.parentNode)
				node.parentNode.replaceChild(n, node);
			return n;
		});
	},
	render: function() { var self = this; return this.load().then(function() { return self.renderContents(); }); },
	renderContents: function() {
		var self = this;
		var nodes = this.children.map(function(s) { return s.render(); });
		this.root = H('div', { 'class': 'cbi-map', 'id': 'cbi-' + this.config }, [
			this.title ? H('h2', { 'name': 'content' }, this.title) : '',
			this.description ? H('div', { 'class': 'cbi-map-descr' }, this.description) : '',
			H('div', { 'class': 'cbi-section-node' }, nodes)
		]);
		if (this.readonly)
			this.root.querySelectorAll('input, select, button').forEach(function(n) { n.disabled = true; });
		this.root.addEventListener('change', function() { self.checkDepends(); });
		this.root.addEventListener('input', function() { self.checkDepends(); });
		dom.bindClassInstance(this.root, this);
		this.checkDepends();
		return Promise.resolve(this.root);
	},
	/* form.js Map.checkDepends: an option whose depends() are not met is
	 * hidden (and removed on save, AbstractValue.parse with !isActive) */
	checkDepends: function() {
		var root = this.root;
		this.children.forEach(function(s) {
			s.children.forEach(function(o) {
				Object.keys(o.widgets).forEach(function(sid) {
					var node = root.querySelector('#cbi-%s-%s-%s'.format(o.map.config, sid, o.option));
					if (node)
						node.classList.toggle('hidden', !o.isActive(sid));
				});
			});
		});
	},

	/* form.js Map.lookupOption(name, section_id): [option, section_id] of a
	 * field rendered now (found by its data-field), else null */
	lookupOption: function(name, section_id) {
		var found = null;
		if (!document.querySelector('[data-field="cbid.%s.%s.%s"]'.format(this.config, section_id, name)))
			return null;
		this.children.forEach(function(s) {
			s.children.forEach(function(o) {
				if (!found && o.option == name && o.widgets[section_id])
					found = [ o, section_id ];
			});
		});
		return found;
	}
});

/* form.js AbstractSection / TypedSection */
var TypedSection = AbstractElement.extend({
	__init__: function(map, sectiontype, title, description) {
		AbstractElement.prototype.__init__.call(this, title, description);
		this.map = map;
		this.sectiontype = sectiontype;
		this.addremove = false;
		this.anonymous = false;
	},
	option: function(cls, option, title, description) {
		var obj = Object.create(cls.prototype);
		cls.call(obj, this, option, title, description);
		this.append(obj);
		return obj;
	},
	tab: function() {},
	taboption: function(tab) { return this.option.apply(this, Array.prototype.slice.call(arguments, 1)); },
	cfgsections: function() {
		return uci.sections(this.map.config, this.sectiontype).map(function(s) { return s['.name']; });
	},
	/* form.js AbstractSection.formvalue(section_id, option) */
	formvalue: function(sid, option) {
		var o = this.children.filter(function(c) { return c.option == option; })[0];
		return o ? o.formvalue(sid) : null;
	},
	parse: function() {
		var tasks = [], self = this;
		this.cfgsections().forEach(function(sid) {
			self.children.forEach(function(o) { tasks.push(o.parse(sid)); });
		});
		return Promise.all(tasks);
	},
	/* form.js TypedSection.handleAdd: a new section, then a silent save */
	handleAdd: function(ev, name) {
		this.map.data.add(this.map.config, this.sectiontype, name);
		return this.map.save(null, true);
	},
	handleRemove: function(sid) {
		this.map.data.remove(this.map.config, sid);
		return this.map.save(null, true);
	},
	renderOption: function(o, sid) {
		return H('div', { 'class': 'cbi-value', 'data-name': o.option, 'id': 'cbi-%s-%s-%s'.format(this.map.config, sid, o.option) }, [
			H('label', { 'class': 'cbi-value-title' }, o.title),
			H('div', { 'class': 'cbi-value-field' }, [
				o.render(sid),
				o.description ? H('div', { 'class': 'cbi-value-description' }, o.description) : ''
			])
		]);
	},
	renderAddRemove: function() {
		var self = this, input;
		if (!this.addremove || this.map.readonly)
			return '';
		if (this.anonymous)
			return H('div', { 'class': 'cbi-section-create' },
				H('button', { 'class': 'cbi-button cbi-button-add', 'click': function(ev) { return self.handleAdd(ev); } }, _('Add')));
		input = H('input', { 'type': 'text', 'class': 'cbi-section-create-name', 'placeholder': _('New name') });
		return H('div', { 'class': 'cbi-section-create' }, [ input, ' ',
			H('button', { 'class': 'cbi-button cbi-button-add', 'click': function(ev) {
				if (input.value)
					return self.handleAdd(ev, input.value);
			} }, _('Add')) ]);
	},
	render: function() {
		var self = this;
		return H('div', { 'class': 'cbi-section', 'id': 'cbi-%s-%s'.format(this.map.config, this.sectiontype) }, [
			this.title ? H('h3', this.title) : '',
			this.description ? H('div', { 'class': 'cbi-section-descr' }, this.description) : '',
			this.cfgsections().map(function(sid) {
				return H('div', { 'class': 'cbi-section-node', 'data-sid': sid },
					self.children.map(function(o) { return self.renderOption(o, sid); }));
			}),
			this.renderAddRemove()
		]);
	}
});

/* form.js NamedSection(map, section, sectiontype): one named section; with
 * addremove an "Add" button creates it when it is missing */
var NamedSection = TypedSection.extend({
	__init__: function(map, section, sectiontype, title, description) {
		TypedSection.prototype.__init__.call(this, map, sectiontype, title, description);
		this.section = section;
	},
	cfgsections: function() {
		return uci.get(this.map.config, this.section) ? [ this.section ] : [];
	},
	render: function() {
		var self = this, sid = this.section, exists = this.cfgsections().length > 0;
		return H('div', { 'class': 'cbi-section', 'id': 'cbi-%s-%s'.format(this.map.config, sid) }, [
			this.title ? H('h3', this.title) : '',
			this.description ? H('div', { 'class': 'cbi-section-descr' }, this.description) : '',
			exists ? H('div', { 'class': 'cbi-section-node', 'data-sid': sid },
				this.children.map(function(o) { return self.renderOption(o, sid); })) : '',
			(this.addremove && !this.map.readonly)
				? H('div', { 'class': 'cbi-section-create' }, exists
					? H('button', { 'class': 'cbi-button cbi-button-remove', 'click': function() { return self.handleRemove(sid); } }, _('Delete'))
					: H('button', { 'class': 'cbi-button cbi-button-add', 'click': function(ev) { return self.handleAdd(ev, sid); } }, _('Add')))
				: ''
		]);
	}
});

/* form.js TableSection/GridSection: one table row per section (tr with
 * data-sid, cells with data-title), options with modalonly only in the
 * "Edit" modal, a drag handle per row with sortable (handleDrop calls
 * uci.move(config, dragged, target, after)), Delete per row with addremove;
 * the modal's Save parses its options and saves the map (handleModalSave) */
var GridSection = TypedSection.extend({
	tab: function() {},
	columns: function() {
		return this.children.filter(function(o) { return !o.modalonly; });
	},
	render: function() {
		var self = this, cols = this.columns(), ro = this.map.readonly, sids = this.cfgsections();
		var head = H('tr', { 'class': 'tr cbi-section-table-titles' }, [
			this.anonymous ? '' : H('th', { 'class': 'th cbi-section-table-cell' }, _('Name')),
			cols.map(function(o) { return H('th', { 'class': 'th cbi-section-table-cell' }, o.title); }),
			H('th', { 'class': 'th cbi-section-table-cell cbi-section-actions' })
		]);
		var rows = sids.map(function(sid, n) {
			var row = H('tr', { 'class': 'tr cbi-section-table-row cbi-rowstyle-' + (n % 2 + 1), 'data-sid': sid,
				'id': 'cbi-%s-%s'.format(self.map.config, sid) }, [
				self.anonymous ? '' : H('td', { 'class': 'td cbi-value-field', 'data-title': _('Name') }, H('strong', sid)),
				cols.map(function(o) {
					return H('td', { 'class': 'td cbi-value-field', 'data-title': o.title, 'data-name': o.option },
						o.editable ? o.render(sid) : o.textvalue(sid));
				}),
				H('td', { 'class': 'td cbi-section-table-cell nowrap cbi-section-actions' }, H('div', [
					self.sortable && !ro ? H('div', { 'class': 'btn cbi-button drag-handle center', 'title': _('Drag to reorder'),
						'draggable': 'true' }, '☰') : '',
					H('button', { 'class': 'cbi-button cbi-button-edit', 'click': function() { return self.renderMoreOptionsModal(sid); } },
						ro ? _('Show') : _('Edit')),
					self.addremove && !ro ? H('button', { 'class': 'cbi-button cbi-button-remove',
						'click': function() { return self.handleRemove(sid); } }, _('Delete')) : ''
				]))
			]);
			if (self.sortable && !ro)
				self.bindDrag(row);
			return row;
		});
		return H('div', { 'class': 'cbi-section cbi-tblsection', 'id': 'cbi-%s-%s'.format(this.map.config, this.sectiontype) }, [
			this.title ? H('h3', this.title) : '',
			this.description ? H('div', { 'class': 'cbi-section-descr' }, this.description) : '',
			H('table', { 'class': 'table cbi-section-table' }, [ head ].concat(rows.length ? rows
				: [ H('tr', { 'class': 'tr placeholder' }, H('td', { 'class': 'td' }, H('em', _('This section contains no values yet')))) ])),
			this.renderAddRemove()
		]);
	},
	/* HTML5 drag and drop as form.js TableSection does it: a drag starts only
	 * from a mousedown on the row's drag handle (handleDragInit,
	 * handleDragStart), dragenter takes the target row (handleDragEnter),
	 * dragover marks its upper or lower half (handleDragOver) and drop puts
	 * the row there and calls uci.move(config, dragged, target, after)
	 * (handleDrop) */
	bindDrag: function(row) {
		var self = this;
		row.addEventListener('mousedown', function(ev) { GridSection.drag = { node: ev.target }; });
		row.addEventListener('dragstart', function(ev) {
			var d = GridSection.drag;
			if (!d || !d.node.classList.contains('drag-handle')) {
				GridSection.drag = null;
				ev.preventDefault();
				return;
			}
			d.node = d.node.closest('.tr');
			ev.dataTransfer.setData('text', 'drag');
		});
		row.addEventListener('dragenter', function(ev) {
			if (GridSection.drag) {
				GridSection.drag.target = row;
				GridSection.drag.rect = row.getBoundingClientRect();
			}
		});
		row.addEventListener('dragover', function(ev) {
			var d = GridSection.drag;
			if (!d || !d.target)
				return;
			d.below = ev.clientY > d.rect.top + d.rect.height / 2;
			ev.preventDefault();
		});
		row.addEventListener('drop', function(ev) {
			var d = GridSection.drag;
			ev.preventDefault();
			GridSection.drag = null;
			if (!d || !d.node || !d.target || d.node === d.target)
				return;
			d.target.parentNode.insertBefore(d.node, d.below ? d.target.nextSibling : d.target);
			self.map.data.move(self.map.config, d.node.getAttribute('data-sid'), d.target.getAttribute('data-sid'), !!d.below);
		});
	},
	renderMoreOptionsModal: function(sid) {
		var self = this, ro = this.map.readonly;
		var body = H('div', { 'class': 'cbi-section', 'data-sid': sid },
			this.children.map(function(o) { return self.renderOption(o, sid); }));
		this.modal = { sid: sid, node: body };
		ui.showModal(this.title + ' » ' + sid, [ body, H('div', { 'class': 'right' }, [
			H('button', { 'class': 'cbi-button', 'click': function() { return self.handleModalCancel(); } }, _('Dismiss')), ' ',
			ro ? '' : H('button', { 'class': 'cbi-button cbi-button-positive important',
				'click': function() { return self.handleModalSave(); } }, _('Save'))
		]) ]);
		if (ro)
			body.querySelectorAll('input, select, button').forEach(function(n) { n.disabled = true; });
	},
	handleModalCancel: function() {
		var self = this;
		this.children.forEach(function(o) { delete o.widgets[self.modal.sid]; });
		this.modal = null;
		ui.hideModal();
	},
	/* form.js GridSection.handleModalSave: the modal's values are parsed and
	 * saved; an invalid one keeps the modal open with its message */
	handleModalSave: function() {
		var self = this, sid = this.modal.sid;
		return Promise.all(this.children.map(function(o) { return o.parse(sid); })).then(function() {
			self.children.forEach(function(o) { delete o.widgets[sid]; });
			self.modal = null;
			ui.hideModal();
			return self.map.save(null, true);
		}).catch(function(e) {
			RECORD.ui.push([ 'save-error', String(e.message) ]);
		});
	}
});

/* form.js AbstractValue: cfgvalue from uci, formvalue from the widget,
 * validate(section_id, value) true or a message, parse() as
 * AbstractValue.parse: invalid -> reject "Option "%s" contains an invalid
 * input value.", empty -> remove when rmempty, changed -> write */
var AbstractValue = AbstractElement.extend({
	__init__: function(section, option, title, description) {
		AbstractElement.prototype.__init__.call(this, title, description);
		this.section = section;
		this.map = section.map;
		this.option = option;
		this.rmempty = true;
		this.optional = false;
		this.keylist = [];
		this.vallist = [];
		this.deps = [];
		this.widgets = {};
	},
	value: function(key, val) { this.keylist.push(String(key)); this.vallist.push(val != null ? val : key); },
	depends: function(field, value) {
		var d = {};
		if (typeof field == 'string')
			d[field] = value;
		else
			d = field;
		this.deps.push(d);
	},
	/* form.js AbstractValue.isActive with depends(): a dependency is met when
	 * the other option's form (or saved) value equals the given one */
	isActive: function(sid) {
		var self = this;
		if (!this.deps.length)
			return true;
		return this.deps.some(function(d) {
			return Object.keys(d).every(function(k) {
				var v = self.section.formvalue(sid, k);
				if (v == null)
					v = uci.get(self.map.config, sid, k);
				return String(v) == String(d[k]);
			});
		});
	},
	validate: function(sid, value) { return true; },
	cfgvalue: function(sid) { return uci.get(this.map.config, sid, this.option); },
	/* form.js AbstractValue.textvalue: the saved value (else the default),
	 * HTML-escaped; GridSection.renderTextValue puts it in the cell */
	textvalue: function(sid) {
		var v = this.cfgvalue(sid);
		if (v == null || v === '')
			v = this.default;
		return '%h'.format(Array.isArray(v) ? v.join(', ') : (v == null ? '-' : String(v)));
	},
	formvalue: function(sid) {
		var w = this.widgets[sid];
		return w ? w.getValue() : null;
	},
	isValid: function(sid) {
		var w = this.widgets[sid];
		return !w || w.isValid();
	},
	getValidationError: function(sid) {
		var w = this.widgets[sid];
		return w ? w.error : '';
	},
	write: function(sid, value) { return uci.set(this.map.config, sid, this.option, value); },
	remove: function(sid) {
		if (uci.get(this.map.config, sid, this.option) != null)
			return uci.unset(this.map.config, sid, this.option);
	},
	parse: function(sid) {
		var active = this.isActive(sid), cval, fval, title;
		if (!this.widgets[sid])
			return Promise.resolve();
		if (active && !this.isValid(sid)) {
			title = this.stripTags(this.title).trim();
			return Promise.reject(new TypeError(
				_('Option "%s" contains an invalid input value.').format(title || this.option) + ' ' + this.getValidationError(sid)));
		}
		if (!active)
			return Promise.resolve(this.remove(sid));
		if (active) {
			cval = this.cfgvalue(sid);
			fval = this.formvalue(sid);
			if (fval == null || fval == '' || (Array.isArray(fval) && !fval.length)) {
				if (this.rmempty || this.optional)
					return Promise.resolve(this.remove(sid));
				return Promise.reject(new TypeError(_('Option "%s" must not be empty.').format(this.option)));
			}
			if (!isEqual(cval, fval))
				return Promise.resolve(this.write(sid, fval));
		}
		return Promise.resolve();
	},
	/* the widget: ui.Textfield (ui.Combobox with values) */
	renderWidget: function(sid, value) {
		var self = this, list = null;
		var input = H('input', { 'type': this.password ? 'password' : 'text', 'class': 'cbi-input-text',
			'id': 'widget.cbid.%s.%s.%s'.format(this.map.config, sid, this.option),
			'placeholder': this.placeholder || null, 'value': value == null ? null : value });
		if (this.keylist.length) {
			list = H('datalist', { 'id': 'list.%s.%s'.format(sid, this.option) },
				this.keylist.map(function(k, i) { return H('option', { 'value': k }, self.vallist[i]); }));
			input.setAttribute('list', list.id);
		}
		var w = { node: H('div', { 'class': 'cbi-value-widget' }, [ input, list || '' ]), error: null,
			getValue: function() { return input.value; },
			isValid: function() { return w.check() === true; },
			check: function() {
				var v = ui.validate(input, !!(self.rmempty || self.optional), L.bind(self.validate, self, sid));
				w.error = (v === true) ? null : v;
				return v;
			} };
		input.addEventListener('input', function() { w.check(); });
		input.addEventListener('blur', function() { w.check(); });
		return w;
	},
	render: function(sid) {
		/* form.js Value.renderWidget: the saved value, else the default */
		var value = this.cfgvalue(sid);
		if (value == null)
			value = this.default;
		var w = this.renderWidget(sid, value);
		this.widgets[sid] = w;
		w.node.setAttribute('data-field', 'cbid.%s.%s.%s'.format(this.map.config, sid, this.option));
		return w.node;
	}
});

var Value = AbstractValue.extend({});

/* form.js FlagValue: a checkbox; enabled '1' / disabled '0'; at its default
 * with rmempty the option is removed, else written (FlagValue.parse) */
var Flag = AbstractValue.extend({
	__init__: function() {
		AbstractValue.prototype.__init__.apply(this, arguments);
		this.enabled = '1';
		this.disabled = '0';
		this.default = this.disabled;
	},
	textvalue: function(sid) {
		var v = this.cfgvalue(sid);
		return ((v == null ? this.default : v) == this.enabled) ? _('Yes') : _('No');
	},
	renderWidget: function(sid, value) {
		var self = this;
		var box = H('input', { 'type': 'checkbox', 'id': 'widget.cbid.%s.%s.%s'.format(this.map.config, sid, this.option) });
		box.checked = (value == this.enabled);
		return { node: H('div', { 'class': 'cbi-checkbox' }, [ box, H('label', { 'for': box.id }) ]), error: null,
			getValue: function() { return box.checked ? self.enabled : self.disabled; },
			isValid: function() { return true; } };
	},
	parse: function(sid) {
		var fval;
		if (!this.widgets[sid])
			return Promise.resolve();
		if (!this.isActive(sid))
			return Promise.resolve(this.remove(sid));
		fval = this.formvalue(sid);
		if (fval == this.default && (this.optional || this.rmempty))
			return Promise.resolve(this.remove(sid));
		return Promise.resolve(this.write(sid, fval));
	}
});

/* form.js ListValue: a select of the values given with value() */
var ListValue = AbstractValue.extend({
	renderWidget: function(sid, value) {
		var self = this, seen = {};
		var sel = H('select', { 'class': 'cbi-input-select', 'id': 'widget.cbid.%s.%s.%s'.format(this.map.config, sid, this.option) },
			this.keylist.filter(function(k) { return seen[k] ? false : (seen[k] = true); }).map(function(k) {
				return H('option', { 'value': k }, self.vallist[self.keylist.indexOf(k)]);
			}));
		if (value != null)
			sel.value = value;
		return { node: H('div', { 'class': 'cbi-value-widget' }, sel), error: null,
			getValue: function() { return sel.value; }, isValid: function() { return true; } };
	}
});

/* form.js DynamicList with ui.DynamicList: one row per item and a text field
 * to add one; validate() is asked for each item typed (the field is marked
 * invalid and the item not added); the value is the array of items */
var DynamicList = AbstractValue.extend({
	textvalue: function(sid) {
		var v = L.toArray(this.cfgvalue(sid));
		return v.length ? '%h'.format(v.join(', ')) : '-';
	},
	renderWidget: function(sid, value) {
		var self = this, items = L.toArray(value).slice();
		var list = H('div', { 'class': 'cbi-dynlist' });
		var add = H('input', { 'type': 'text', 'class': 'cbi-input-text', 'placeholder': this.placeholder || null,
			'id': 'widget.cbid.%s.%s.%s'.format(this.map.config, sid, this.option) });
		var w = { node: list, error: null, items: items,
			getValue: function() { return items.slice(); },
			isValid: function() { return w.error == null; } };
		function draw() {
			dom.content(list, flat([ items.map(function(item, i) {
				return H('div', { 'class': 'item' }, [ H('span', [ item ]), H('span', { 'class': 'remove', 'title': _('Remove'),
					'click': function() { items.splice(i, 1); draw(); } }, '×') ]);
			}), H('div', { 'class': 'add-item' }, [ add, H('button', { 'class': 'cbi-button cbi-button-add',
				'click': function() { w.addItem(); } }, '+') ]) ]));
		}
		w.addItem = function() {
			var v = ui.validate(add, true, L.bind(self.validate, self, sid));
			w.error = (v === true) ? null : v;
			if (v === true && add.value.length) {
				items.push(add.value);
				add.value = '';
				draw();
			}
			return v;
		};
		add.addEventListener('keydown', function(ev) { if (ev.key == 'Enter') w.addItem(); });
		draw();
		return w;
	}
});

var DummyValue = AbstractValue.extend({
	renderWidget: function(sid, value) {
		return { node: H('div', this.textvalue(sid)), getValue: function() { return null; }, isValid: function() { return true; } };
	},
	parse: function() { return Promise.resolve(); }
});

var form = {
	Map: CBIMap, TypedSection: TypedSection, NamedSection: NamedSection, GridSection: GridSection,
	TableSection: GridSection, Value: Value, Flag: Flag, ListValue: ListValue, DynamicList: DynamicList,
	DummyValue: DummyValue
};

/* ------------------------------------------------------------ view */

/* luci.js view: __init__ runs load(), then render(), puts the nodes into
 * #view and appends the footer; handleSave saves every .cbi-map of
 * #maincontent, handleSaveApply saves then calls ui.changes.apply(mode ==
 * '0'); addFooter disables the buttons when every map is readonly (or, with
 * no map, when hasViewPermission() is false) and leaves out a button whose
 * handler the view set to null */
var view = Class.extend({
	__init__: function() {
		var vp = document.getElementById('view'), self = this;
		dom.content(vp, H('div', { 'class': 'spinning' }, _('Loading view…')));
		this.ready = Promise.resolve(this.load()).then(function(data) { return self.render(data); }).then(function(nodes) {
			dom.content(vp, nodes);
			dom.append(vp, self.addFooter());
		}).catch(function(e) { RECORD.errors.push(String(e && e.stack || e)); });
	},
	load: function() {},
	render: function() {},
	handleSave: function() {
		var tasks = [];
		document.getElementById('maincontent').querySelectorAll('.cbi-map').forEach(function(map) {
			tasks.push(dom.callClassMethod(map, 'save'));
		});
		return Promise.all(tasks);
	},
	handleSaveApply: function(ev, mode) {
		return this.handleSave(ev).then(function() { ui.changes.apply(mode == '0'); });
	},
	handleReset: function() {
		var tasks = [];
		document.getElementById('maincontent').querySelectorAll('.cbi-map').forEach(function(map) {
			tasks.push(dom.callClassMethod(map, 'reset'));
		});
		return Promise.all(tasks);
	},
	addFooter: function() {
		var readonly = true, hasmap = false, self = this;
		document.getElementById('view').querySelectorAll('.cbi-map').forEach(function(map) {
			var m = dom.findClassInstance(map);
			if (m) {
				hasmap = true;
				if (!m.readonly)
					readonly = false;
			}
		});
		if (!hasmap)
			readonly = !L.hasViewPermission();
		if (!this.handleSaveApply && !this.handleSave && !this.handleReset)
			return H([]);
		return H('div', { 'class': 'cbi-page-actions' }, [
			/* the ComboButton's first choice, '0': Save & Apply (checked) */
			this.handleSaveApply ? H('button', { 'class': 'btn cbi-button cbi-button-apply important', 'id': 'save-apply',
				'disabled': readonly ? '' : null, 'click': function(ev) {
					return ui.createHandlerFn(self, 'handleSaveApply')(ev, '0');
				} }, _('Save & Apply')) : '', ' ',
			this.handleSave ? H('button', { 'class': 'cbi-button cbi-button-save', 'disabled': readonly ? '' : null,
				'click': ui.createHandlerFn(this, 'handleSave') }, _('Save')) : '', ' ',
			this.handleReset ? H('button', { 'class': 'cbi-button cbi-button-reset', 'disabled': readonly ? '' : null,
				'click': ui.createHandlerFn(this, 'handleReset') }, _('Reset')) : ''
		]);
	}
});

/* ------------------------------------------------------------ require */

var classes = { baseclass: Class, dom: dom, view: view, form: form, uci: uci, rpc: rpc, ui: ui, poll: poll };

/* luci.js require(): the file's leading 'require NAME [as ALIAS]' strings
 * name its dependencies; the source runs as the body of
 * function(window, document, L, deps...), must return a class, and the page
 * gets an instance of it */
L.loadView = function(source) {
	var names = [], aliases = [], m, re = /^\s*['"](use strict|require\s+(\S+?)(?:\s+as\s+(\S+))?)['"];?\s*$/;
	source.split('\n').some(function(line) {
		if (!line.trim() || /^\s*(\/\/|\/\*|\*)/.test(line))
			return false;
		m = re.exec(line);
		if (!m)
			return true;
		if (m[2]) {
			if (!(m[2] in classes))
				throw new Error('the stand-in has no class "' + m[2] + '"');
			names.push(m[2]);
			aliases.push(m[3] || m[2].replace(/[^a-zA-Z0-9_]/g, '_'));
		}
		return false;
	});
	var factory = new Function([ 'window', 'document', 'L' ].concat(aliases).join(', '), source);
	var cls = factory.apply(factory, [ window, document, L ].concat(names.map(function(n) { return classes[n]; })));
	if (!Class.isSubclass(cls))
		throw new TypeError('factory yields invalid constructor');
	var instance = new cls();
	window.VIEW = instance;
	return instance.ready;
};

L.standin = { uci: uci, rpc: rpc, ui: ui, poll: poll, form: form, view: view, dom: dom };

})(window, document);
