// UI strings in English and Simplified Chinese. The language comes from the browser
// (navigator.languages) unless the user picked one in the settings.
const en = {
    appName: 'chatweb',
    signIn: 'Sign in', signOut: 'Sign out', username: 'Username', password: 'Password',
    apiKey: 'API key', usePassword: 'Username and password', useKey: 'API key',
    signInFailed: 'Sign-in failed', signingIn: 'Signing in…',
    newChat: 'New chat', search: 'Search conversations', rename: 'Rename', delete: 'Delete',
    clearAll: 'Delete all conversations', confirmClearAll: 'Delete every conversation in this browser?',
    confirmDelete: 'Delete this conversation?', confirmDeleteMsg: 'Delete this message?',
    untitled: 'New chat', send: 'Send', stop: 'Stop', regenerate: 'Regenerate', copy: 'Copy',
    copied: 'Copied', copyCode: 'Copy code', deleteMsg: 'Delete message',
    placeholder: 'Message (Enter to send, Shift+Enter for a new line, / for prompts)',
    thinking: 'Thinking…', settings: 'Settings', close: 'Close', save: 'Save', reset: 'Reset',
    systemPrompt: 'System prompt', temperature: 'Temperature', topP: 'Top P',
    theme: 'Theme', themeAuto: 'Auto', themeLight: 'Light', themeDark: 'Dark',
    language: 'Language', langAuto: 'From the browser',
    longReply: 'Continue long replies automatically', context: 'Send the conversation as context',
    exportJson: 'Export JSON', importJson: 'Import JSON', exportMd: 'Export Markdown',
    importDone: 'Imported {n} conversations', importBad: 'Not a chatweb export',
    balance: 'Balance', tokens: 'tokens', unlimited: 'unlimited', balanceUnknown: 'balance unknown',
    lowBalance: 'Your balance is low.', noBalance: 'Your balance is used up.', recharge: 'Recharge',
    usedThisChat: 'This conversation: {n} tokens',
    usedReply: '{n} tokens used',
    testUpstream: 'Test mode: replies come from the built-in test upstream, not from a real model.',
    menu: 'Conversations', closeMenu: 'Close the conversation list',
    errorGeneric: 'Something went wrong, please try again.',
    stopped: 'stopped', you: 'You', assistant: 'Assistant', messages: 'Messages',
    prompts: 'Prompt library', addPrompt: 'Add prompt', promptTitle: 'Title', promptText: 'Prompt',
    noPrompts: 'No prompts yet. Add one below; type / in the message box to use it.',
    shortcuts: 'Keyboard shortcuts',
    shortcutList: [
        ['Enter', 'send'], ['Shift+Enter', 'new line'], ['Esc', 'stop the reply / close a dialog or the conversation list'],
        ['Ctrl+Shift+O', 'new chat'], ['Ctrl+K', 'search conversations'], ['/', 'prompt library (in an empty message box)'],
    ],
    model: 'Model', modelSet: 'Model: {m}', you_are: 'Signed in as {name}', blocked: 'Your account is blocked.',
    sessionExpired: 'Your session ended; please sign in again.', raw: 'Show as text', preview: 'Show formatted',
};

const zh = {
    appName: 'chatweb',
    signIn: '登录', signOut: '退出登录', username: '用户名', password: '密码',
    apiKey: 'API 密钥', usePassword: '用户名和密码', useKey: 'API 密钥',
    signInFailed: '登录失败', signingIn: '正在登录…',
    newChat: '新建对话', search: '搜索对话', rename: '重命名', delete: '删除',
    clearAll: '删除全部对话', confirmClearAll: '删除此浏览器中的全部对话？',
    confirmDelete: '删除此对话？', confirmDeleteMsg: '删除此消息？',
    untitled: '新对话', send: '发送', stop: '停止', regenerate: '重新生成', copy: '复制',
    copied: '已复制', copyCode: '复制代码', deleteMsg: '删除消息',
    placeholder: '输入消息（Enter 发送，Shift+Enter 换行，/ 打开提示词）',
    thinking: '思考中…', settings: '设置', close: '关闭', save: '保存', reset: '重置',
    systemPrompt: '系统提示词', temperature: '温度 (temperature)', topP: 'Top P',
    theme: '主题', themeAuto: '跟随系统', themeLight: '浅色', themeDark: '深色',
    language: '语言', langAuto: '跟随浏览器',
    longReply: '自动继续过长的回复', context: '发送对话上下文',
    exportJson: '导出 JSON', importJson: '导入 JSON', exportMd: '导出 Markdown',
    importDone: '已导入 {n} 个对话', importBad: '不是 chatweb 导出的文件',
    balance: '余额', tokens: 'tokens', unlimited: '不限', balanceUnknown: '余额未知',
    lowBalance: '余额不多了。', noBalance: '余额已用尽。', recharge: '充值',
    usedThisChat: '本对话：{n} tokens',
    usedReply: '用量 {n} tokens',
    testUpstream: '测试模式：回复来自内置的测试上游，而不是真实的模型。',
    menu: '对话列表', closeMenu: '关闭对话列表',
    errorGeneric: '出错了，请稍后再试。',
    stopped: '已停止', you: '你', assistant: '助手', messages: '消息',
    prompts: '提示词库', addPrompt: '添加提示词', promptTitle: '标题', promptText: '提示词',
    noPrompts: '还没有提示词。在下面添加；在输入框中输入 / 使用。',
    shortcuts: '快捷键',
    shortcutList: [
        ['Enter', '发送'], ['Shift+Enter', '换行'], ['Esc', '停止回复 / 关闭对话框或对话列表'],
        ['Ctrl+Shift+O', '新建对话'], ['Ctrl+K', '搜索对话'], ['/', '提示词库（输入框为空时）'],
    ],
    model: '模型', modelSet: '模型：{m}', you_are: '当前用户：{name}', blocked: '你的账号已被禁用。',
    sessionExpired: '登录已失效，请重新登录。', raw: '显示原文', preview: '显示格式',
};

const tables = { en, 'zh-CN': zh };
let current = en;
let currentName = 'en';

/** 'zh-CN' for any Chinese browser language, else 'en'. */
export function browserLanguage() {
    const langs = (navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || 'en']);
    for (const l of langs) {
        const s = String(l).toLowerCase();
        if (s.startsWith('zh')) return 'zh-CN';
        if (s.startsWith('en')) return 'en';
    }
    return 'en';
}

export function setLanguage(name) {
    currentName = tables[name] ? name : browserLanguage();
    current = tables[currentName];
    document.documentElement.lang = currentName;
}

export function language() {
    return currentName;
}

/** The string for key, with {name} placeholders filled from vars. */
export function t(key, vars) {
    let s = current[key] ?? en[key] ?? key;
    if (vars && typeof s === 'string') s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
    return s;
}
